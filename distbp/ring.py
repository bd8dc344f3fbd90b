"""distbp's own ring allreduce: point-to-point messages of the `Comm` interface, advanced by its caller.

`Comm.ring_allreduce(max_elems, dtype)` builds one on a duplicate communicator; `distbp.reducer`
drives it during the backward pass (start each bucket, progress between compute chunks, wait).
"""

from __future__ import annotations

import collections

import numpy as np

from distbp.comm import Comm


class RingAllreduce:
    """In-place SUM over ranks by a ring of point-to-point messages, advanced by its caller.

    A buffer of n elements is cut into p chunks. In p−1 reduce-scatter steps rank r sends one chunk
    to rank r+1 and adds the chunk it receives from rank r−1 into its own copy, so that rank r ends
    up holding the complete sum of chunk (r+1) mod p; in p−1 allgather steps those sums travel round
    the ring into every rank's buffer. Each rank sends and receives 2(p−1)/p·n elements (the least any
    allreduce moves), and the result is the same bits on every rank: each chunk is summed once, along
    the ring, and then copied.

    Why distbp has its own: on one node with MPICH it measured faster than MPICH's Iallreduce for the
    gradient's buckets and needs no message-sized temporary per call (benchmarks/allreduce.py).

    Buffers are summed one after another in the order start() was called (every rank must start the
    same buffers, of the same sizes, in the same order); only the first unfinished one has messages in
    flight, so one scratch array of ceil(max_elems / p) elements serves them all. Like MPI's own
    non-blocking collectives it moves only when called: progress() between compute chunks, wait() at
    the end. Do not touch a started buffer before wait() returns.
    """

    def __init__(self, comm: Comm, max_elems: int, dtype):
        self.comm = comm  # its own (Comm.duplicate), so that no other message is taken for the ring's
        self.rank, self.size = comm.rank, comm.size
        self.max_elems = int(max_elems)
        # one rank sums nothing and needs no scratch
        self.scratch = np.empty(-(-self.max_elems // self.size) if self.size > 1 else 0, dtype=dtype)
        self._queue: collections.deque[_RingOp] = collections.deque()

    def start(self, buf: np.ndarray) -> None:
        """Queue buf (flat, contiguous, the ring's dtype, at most max_elems elements) for summing in place."""
        if buf.dtype != self.scratch.dtype or buf.ndim != 1 or buf.size > self.max_elems or not buf.flags.c_contiguous:
            raise ValueError(f"ring allreduce takes flat contiguous {self.scratch.dtype} buffers of at most "
                             f"{self.max_elems} elements, got {buf.dtype} {buf.shape}")
        if self.size > 1:
            self._queue.append(_RingOp(buf, self.size))

    @property
    def in_flight(self) -> int:
        """Buffers started and not yet summed (they complete in the order they were started)."""
        return len(self._queue)

    def progress(self) -> bool:
        """Advance without blocking as far as the messages allow; True when nothing is left in flight."""
        return self._advance(block=False)

    def wait(self) -> None:
        """Block until every started buffer holds its sum over ranks."""
        self._advance(block=True)

    def _advance(self, block: bool) -> bool:
        """Run the queue's steps as their messages arrive: waiting for them (block) or only testing."""
        p, r = self.size, self.rank
        while self._queue:
            op = self._queue[0]
            reduce = op.step < p - 1  # else allgather
            # chunk offsets: reduce-scatter step s sends chunk r-s; allgather step s sends chunk r-(s-p),
            # the sum this rank completed (r+1 at s = p-1) and then the ones it received
            send = (r - (op.step if reduce else op.step - p)) % p
            recv = (send - 1) % p
            if op.requests is None:
                # a reduce-scatter chunk is added, so it lands in scratch first; an allgather chunk is final
                into = self.scratch[:op.bounds[recv + 1] - op.bounds[recv]] if reduce else op.chunk(recv)
                op.requests = [self.comm.start_recv(into, (r - 1) % p),
                               self.comm.start_send(op.chunk(send), (r + 1) % p)]
            if block:
                self.comm.wait_all(op.requests)
            elif not self.comm.test_all(op.requests):
                return False
            if reduce:
                chunk = op.chunk(recv)
                np.add(chunk, self.scratch[:chunk.size], out=chunk)
            op.step, op.requests = op.step + 1, None
            if op.step == 2 * (p - 1):
                self._queue.popleft()
        return True


class _RingOp:
    """One buffer in the ring: its p chunk bounds, the step it is at, that step's requests."""

    __slots__ = ("buf", "bounds", "step", "requests")

    def __init__(self, buf: np.ndarray, p: int):
        self.buf, self.step, self.requests = buf, 0, None
        self.bounds = [buf.size * k // p for k in range(p + 1)]

    def chunk(self, k: int) -> np.ndarray:
        return self.buf[self.bounds[k]:self.bounds[k + 1]]
