"""distbp's logarithmic allreduce: Bruck's reduce-scatter and allgather (or, for small buffers on 2^k ranks,
recursive doubling) in point-to-point messages, advanced by its caller.

`bruck_allreduce(comm, max_elems, dtype, codec)` builds one on a duplicate communicator. The hierarchical
allreduce (`distbp.comm.hier`) sums its slices across nodes with it: 2·ceil(log₂ h) message latencies for h
nodes (log₂ h for small buffers when h is a power of two) where distbp's ring (`distbp.comm.ring`) pays 2(h−1),
and the same 2n(h−1)/h bytes per rank for any h, not only powers of two.
"""

from __future__ import annotations


import numpy as np

from distbp.comm.base import Comm
from distbp.comm.codecs import Codec
from distbp.comm.queued import QueuedAllreduce

# buffers of at most this many bytes go by recursive doubling on 2^k ranks: log₂ p rounds instead of 2·log₂ p,
# for log₂ p·n bytes instead of 2(p−1)/p·n. It pays while a latency α costs more than the extra bytes,
# n < 2α/((log₂ p − 2 + 2/p)·β): 200 KB at p = 4 for this VM's TCP (α ≈ 50 µs, 1 GB/s), 37 KB for InfiniBand
# (1.5 µs, 12.5 GB/s); 64 KiB lies between. On 2 ranks the bytes are the same n either way, but doubling adds
# all n elements where the halves add n/2 (and need half the scratch): large buffers take the halves there too.
DOUBLING_BYTES = 64 << 10


def bruck_allreduce(comm: Comm, max_elems: int, dtype, codec: Codec | None = None) -> BruckAllreduce:
    """Collective: a Bruck allreduce over `comm`'s ranks for buffers of up to max_elems elements.

    codec (`distbp.comm.codecs.Codec`): None sends the buffers' own dtype; else 16-bit words travel and the
    sums are rounded to the codec's format (the same bits on every rank).
    """
    # a duplicate communicator keeps its messages apart from everything else
    return BruckAllreduce(comm.duplicate() if comm.size > 1 else comm, max_elems, dtype, codec)


def rounds(p: int) -> list[tuple[int, int]]:
    """(distance d_k = 2^k, blocks m_k = min(2^k, p − 2^k)) of each Bruck allgather round k = 0 … ceil(log₂ p) − 1.

    Σ m_k = p − 1: each rank receives every other rank's block once."""
    out, d = [], 1
    while d < p:
        out.append((d, min(d, p - d)))
        d *= 2
    return out


def doubles(p: int, elements: int, itemsize: int) -> bool:
    """Whether a buffer of `elements` goes by recursive doubling on p ranks (else by Bruck's two halves)."""
    return p & (p - 1) == 0 and elements * itemsize <= DOUBLING_BYTES


class BruckAllreduce(QueuedAllreduce):
    """In-place SUM over p ranks in O(log p) rounds of point-to-point messages, advanced by its caller.

    Bruck (any p): a buffer of n elements is cut into p blocks; rank j ends up owning the sum of block j. With
    the allgather rounds k = 0 … K−1 of `rounds(p)` (distance d = 2^k, m blocks):

      reduce-scatter, k = K−1 down to 0: rank r sends its partial sums of blocks r+d … r+d+m−1 (mod p) to
        rank r+d and adds the partial sums of blocks r … r+m−1 that rank r−d sends into its own. Before the
        round rank r still carries blocks r … r+min(2d, p)−1; after it, r … r+d−1; after round 0, block r,
        now the sum over all ranks (the time-reversed Bruck allgather, whose every block reaches every rank
        once, is a reduction that adds every rank's block once).
      allgather, k = 0 up to K−1: rank r sends its final blocks r … r+m−1 to rank r−d and receives blocks
        r+d … r+d+m−1 from rank r+d (Bruck et al., 1997).

    Each rank sends and receives (p−1)/p·n elements in each half, 2(p−1)/p·n in all (the least any allreduce
    moves, as the ring), in 2K rounds (a round's blocks may wrap past block p−1: then two messages, sent and
    posted in the same order on both ends). Each block is summed once, along a fixed tree, by its owner and
    then copied: every rank ends with the same bits.

    Recursive doubling (`doubles`: buffers of at most DOUBLING_BYTES on 2^k ranks): in round k rank r swaps
    the whole buffer with rank r XOR 2^k and adds; r computes a + b where its partner computes b + a, which IEEE
    addition makes the same bits, so every rank of a group holds the same sum after each round. log₂ p rounds
    of n.

    Buffers are summed one after another in the order start() was called (every rank must start the same
    buffers, of the same sizes, in the same order); only the first unfinished one has messages in flight, so
    one scratch array serves them all (`bruck_buffer_elements`). It moves only when called: progress() between
    compute chunks, wait() at the end. Do not touch a started buffer before wait() returns.

    codec (optional): 16-bit words travel. Bruck: a reduce-scatter round encodes the partial sums it sends
    into `wire` (uint16, max_elems, each block at its own offset) and decode_adds the words it receives (into
    `scratch`, uint16) into its float blocks; the owner rounds its completed block once (encode into wire,
    decode back), and the allgather passes words on unchanged (received into wire, decoded into the block,
    sent on). Recursive doubling: the buffer is encoded once into wire, and each round adds the partner's words
    into it with `Codec.add` (float32 sum, rounded: symmetric, so the same bits on both), decoded at the end.
    Each partial sum is rounded once, so |error| ≤ (K+1)·u·Σ_r |g_r| to first order. On one rank start() only
    rounds the buffer (`Codec.round`).
    """

    what = "Bruck allreduce"

    def __init__(self, comm: Comm, max_elems: int, dtype, codec: Codec | None = None):
        super().__init__(comm, max_elems, dtype, codec)
        self.rounds = rounds(self.size)
        wire, scratch = bruck_buffer_elements(self.max_elems, self.size, self.dtype.itemsize, codec is not None)
        # what arrives to be added: the buffer's dtype, or words with a codec
        self.scratch = np.empty(scratch, dtype=self.dtype if codec is None else np.uint16)
        self.wire = np.empty(wire, np.uint16) if codec is not None else None

    def _queue_op(self, buf: np.ndarray) -> _Op:
        doubling = doubles(self.size, buf.size, self.dtype.itemsize)
        return _Op(buf, self.size, len(self.rounds) * (1 if doubling else 2), doubling)

    def _advance(self, block: bool) -> bool:
        """Run the queue's rounds as their messages arrive: waiting for them (block) or only testing."""
        while self._queue:
            op = self._queue[0]
            if op.requests is None:
                op.requests = self._post_doubling(op) if op.doubling else self._post_bruck(op)
            if block:
                self.comm.wait_all(op.requests)
            elif not self.comm.test_all(op.requests):
                return False
            if op.doubling:
                self._complete_doubling(op)
            else:
                self._complete_bruck(op)
            op.step, op.requests = op.step + 1, None
            if op.step == op.steps:
                if op.doubling and self.codec is not None:
                    self.codec.decode(self.wire[:op.buf.size], op.buf)
                self._queue.popleft()
        return True

    # ---- Bruck's reduce-scatter and allgather ----------------------------------------------------------
    def _round(self, op: _Op) -> tuple[bool, int, int, list[slice], list[slice]]:
        """(reduce?, send to, receive from, blocks sent, blocks received) of op's current Bruck round; both are
        m consecutive blocks (mod p), as element ranges (`_Op.window`)."""
        p, r, K = self.size, self.rank, len(self.rounds)
        reduce = op.step < K
        d, m = self.rounds[K - 1 - op.step] if reduce else self.rounds[op.step - K]
        if reduce:
            return True, (r + d) % p, (r - d) % p, op.window((r + d) % p, m), op.window(r, m)
        return False, (r - d) % p, (r + d) % p, op.window(r, m), op.window((r + d) % p, m)

    def _post_bruck(self, op: _Op) -> list:
        """Receives, then sends, one message per piece (a window that wraps is two), in piece order on both ends."""
        reduce, dest, source, send, recv = self._round(op)
        requests = [self.comm.start_recv(into, source) for into in self._landing(op, reduce, recv)]
        for piece in send:
            if self.codec is None:
                out = op.buf[piece]
            else:
                out = self.wire[piece]
                if reduce:
                    self.codec.encode(op.buf[piece], out)  # the partial sum leaves as words, rounded once
            requests.append(self.comm.start_send(out, dest))
        return requests

    def _landing(self, op: _Op, reduce: bool, recv: list[slice]) -> list[np.ndarray]:
        """Where each received piece lands: scratch, one after the other, for a reduce-scatter round (it is
        added); its own place in the buffer (or the wire, with a codec) for an allgather round."""
        if not reduce:
            return [op.buf[s] if self.codec is None else self.wire[s] for s in recv]
        out, at = [], 0
        for s in recv:
            out.append(self.scratch[at:at + s.stop - s.start])
            at += s.stop - s.start
        return out

    def _complete_bruck(self, op: _Op) -> None:
        """Add what a reduce-scatter round received into the buffer, decode what an allgather round received;
        after the last reduce-scatter round, with a codec, round this rank's completed block once (so the
        allgather sends what this rank keeps)."""
        reduce, _, _, _, recv = self._round(op)
        at = 0
        for s in recv:
            n = s.stop - s.start
            if reduce and self.codec is None:
                np.add(op.buf[s], self.scratch[at:at + n], out=op.buf[s])
            elif reduce:
                self.codec.decode_add(self.scratch[at:at + n], op.buf[s])
            elif self.codec is not None:
                self.codec.decode(self.wire[s], op.buf[s])
            at += n
        if reduce and op.step == len(self.rounds) - 1 and self.codec is not None:
            own = op.block(self.rank)
            self.codec.encode(op.buf[own], self.wire[own])
            self.codec.decode(self.wire[own], op.buf[own])

    # ---- recursive doubling ----------------------------------------------------------------------------
    def _post_doubling(self, op: _Op) -> list:
        """Swap the whole buffer (its words, with a codec) with rank r XOR 2^k."""
        n, partner = op.buf.size, self.rank ^ (1 << op.step)
        out = op.buf
        if self.codec is not None:
            out = self.wire[:n]
            if op.step == 0:
                self.codec.encode(op.buf, out)  # rounded once; every later partial sum is rounded by add
        return [self.comm.start_recv(self.scratch[:n], partner), self.comm.start_send(out, partner)]

    def _complete_doubling(self, op: _Op) -> None:
        n = op.buf.size
        if self.codec is None:
            np.add(op.buf, self.scratch[:n], out=op.buf)
        else:
            self.codec.add(self.scratch[:n], self.wire[:n])


def bruck_buffer_elements(max_elems: int, ranks: int, itemsize: int, compressed: bool) -> tuple[int, int]:
    """(wire, scratch) elements of a Bruck allreduce on `ranks` ranks for buffers of up to max_elems elements of
    itemsize bytes: scratch holds what one round receives to add (the buffer's dtype, or uint16 words when
    compressed): a whole buffer for recursive doubling, else the largest reduce-scatter round, ceil(ranks/2)
    blocks of at most ceil(max_elems / ranks); wire, only when compressed, max_elems words. One rank needs
    neither."""
    if ranks <= 1:
        return 0, 0
    largest = max(m for _, m in rounds(ranks))
    scratch = min(max_elems, largest * -(-max_elems // ranks))
    if ranks & (ranks - 1) == 0:  # buffers of up to DOUBLING_BYTES double: the whole buffer arrives at once
        scratch = max(scratch, min(max_elems, DOUBLING_BYTES // itemsize))
    return (max_elems if compressed else 0), scratch


class _Op:
    """One buffer in flight: its p block bounds, the round it is at (Bruck: reduce-scatter first), that round's
    requests."""

    __slots__ = ("bounds", "buf", "doubling", "requests", "step", "steps")

    def __init__(self, buf: np.ndarray, p: int, steps: int, doubling: bool):
        self.buf, self.step, self.steps, self.doubling, self.requests = buf, 0, steps, doubling, None
        self.bounds = [buf.size * k // p for k in range(p + 1)]

    def block(self, j: int) -> slice:
        return slice(self.bounds[j], self.bounds[j + 1])

    def window(self, first: int, m: int) -> list[slice]:
        """Blocks first … first+m−1 (mod p) as element ranges: one, or two where they wrap past the last block;
        empty ranges are left out (both ends leave out the same ones)."""
        p = len(self.bounds) - 1
        end = first + m
        if end <= p:
            pieces = [slice(self.bounds[first], self.bounds[end])]
        else:
            pieces = [slice(self.bounds[first], self.bounds[p]), slice(0, self.bounds[end - p])]
        return [s for s in pieces if s.stop > s.start]
