"""distbp's node-aware (hierarchical) allreduce: sum through shared memory on a node, across nodes by slices.

`HierarchicalAllreduce(comm, n, dtype)` builds one; the gradient reducer drives it like the ring (start each
bucket, progress between compute chunks, wait) as the "hier" transport of `distbp.sync.transports`. Its gradient
buffer lives in memory the node's ranks share, so nothing is copied into messages on a node; across nodes the
slices go through distbp's Bruck allreduce (`distbp.comm.bruck`), 2·ceil(log₂ h) message latencies for h nodes.
With one rank per node there is no node sum: a bucket goes straight to the allreduce across nodes, a small
one (latency-bound) to the MPI library's Iallreduce (`distbp.comm.library`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.comm.bruck import bruck_allreduce
from distbp.comm.library import library_allreduce

# this rank's flags at the start of its segment (int64 sequence numbers of buckets, see HierarchicalAllreduce)
READY, SUMMED, COPIED = 0, 1, 2
FLAG_BYTES = 64  # one cache line, so the gradient that follows starts 64-byte aligned
# with one rank per node, buckets of at most this many bytes cross nodes by the MPI library's Iallreduce, larger
# ones by Bruck's allreduce: small sums are latency-bound, and MPI's collective advances in C where distbp's pays
# Python between messages. benchmarks/hier_cross.py on namespace hosts, two runs (docs/multinode.md): at 64 KiB the
# library's route took 0.66-0.82x Bruck's time on 2x1, 3x1 and 4x1, at 256 KiB 0.89-1.23x, and from 1 MiB on
# Bruck's exact bytes win. With several ranks per node the node's sum pays even for small buckets (the library's
# route took 1.05-1.29x the node path's time at 64 KiB on 2x2, and training's step 1.05-1.25x: bench_study.py).
SMALL_BUCKET_BYTES = 64 << 10


class HierarchicalAllreduce:
    """In-place SUM over ranks of a gradient held in node-shared memory, advanced by its caller.

    grad: (n,) this rank's gradient buffer, a segment of memory shared by the r ranks of its node. A bucket
    grad[lo:hi] is cut into r slices; local rank i owns slice i. For every bucket:
      1. each rank says its bucket is written (flag READY);
      2. the owner of slice i adds the r ranks' slice i into its own (reading their memory directly);
      3. with h > 1 nodes, the owners of slice i on every node sum it over nodes: one allreduce of 1/r of
         the bucket per local index, on its own communicator, so the r ranks of a node use the network at
         once and each host sends and receives 2n(h−1)/h bytes per n. `across` makes that allreduce: distbp's
         Bruck allreduce (`distbp.comm.bruck`, the default: 2·ceil(log₂ h) message latencies, the same bits on
         every rank), or anything with its interface and constructor, such as distbp's ring
         (`distbp.comm.ring.ring_allreduce`, 2(h−1) latencies: what hier used before; benchmarks/hier_cross.py
         measures the two and MPI's Iallreduce);
      4. the owner says its slice is final (flag SUMMED) and every rank copies the other slices from
         their owners' segments.
    Each element is summed once, by its owner (and then along the cross-node tree), and copied: every rank
    ends with the same bits. The flags are sequence numbers in the ranks' segments, polled by progress(),
    so the node needs no message; wait() also waits until every rank of the node has copied what it
    needs (flag COPIED) before the caller may write its gradient again.

    Buckets must be started in the same order with the same bounds on every rank, and not touched
    before wait() returns, nor any longer than max_bucket elements. node_size groups consecutive ranks into
    pretend nodes (tests on one machine). codec (`distbp.comm.codecs`): the cross-node allreduce sends 16-bit
    words (rounded as `distbp.comm.bruck` says); on a node nothing is compressed.

    With one rank per node (r = 1, across h > 1 nodes) there is no node sum to win: every bucket goes whole,
    without flags, through an allreduce over all ranks, a bucket of at most small_bytes (SMALL_BUCKET_BYTES)
    through the MPI library's Iallreduce (`distbp.comm.library`; not with a codec), any other through
    `across`. These "direct" buckets complete in start order like the others (one is done when its
    allreduce is; no flag waits for it).

    Memory: this rank's segment (64 bytes of flags and the gradient) and, across nodes, the cross-node
    allreduce's buffers for slices of ceil(max_bucket / r) elements; no message-sized copy on the node.
    """

    def __init__(self, comm: Comm, n: int, dtype, node_size: int | None = None, codec=None,
                 max_bucket: int | None = None, across: Callable = bruck_allreduce,
                 small_bytes: int = SMALL_BUCKET_BYTES):
        self.dtype = np.dtype(dtype)
        self.node, cross = comm.split_by_node(node_size)
        self.local_rank, self.local_size = self.node.rank, self.node.size
        self.nodes = cross.size
        itemsize = self.dtype.itemsize
        self.shared = self.node.shared_segments(FLAG_BYTES + n * itemsize)
        self._flags = [seg[:FLAG_BYTES].view(np.int64) for seg in self.shared.segments]
        self._grads = [seg[FLAG_BYTES:].view(self.dtype) for seg in self.shared.segments]
        self.grad = self._grads[self.local_rank]
        self._flags[self.local_rank][:] = 0
        self.grad[:] = 0
        self.shared.sync()
        self.node.barrier()  # every rank's flags are zero before anyone polls them
        # the largest slice a rank owns, ceil(largest bucket / r), bounds what the cross-node allreduce ever sums
        self.cross = across(cross, slice_elements(max_bucket or n, self.local_size), self.dtype, codec) \
            if self.nodes > 1 else None
        self._cross_comm = cross
        self._lane = _Lane(self.cross)
        # one rank per node: buckets of at most small_elements go through the library's allreduce
        self.small_elements = small_bytes // itemsize if self.nodes > 1 and self.local_size == 1 and codec is None \
            else 0
        whole = library_allreduce(comm, min(self.small_elements, max_bucket or n), self.dtype) \
            if self.small_elements > 0 else None
        self._whole = _Lane(whole)
        self._seq = 0  # sequence number of the last bucket started (the same on every rank)
        self._node_seq = 0  # … of the last one that took the node path (flags, slices)
        self._queue: list[_Bucket] = []
        self._copied = 0

    # ---- the transport's interface (like RingAllreduce) ------------------------------------------------
    def start(self, buf: np.ndarray) -> None:
        """Queue buf, a contiguous slice of self.grad that this rank has finished writing, for summing."""
        lo = _offset(buf, self.grad)
        self._seq += 1
        bucket = _Bucket(lo, lo + buf.size, self._seq, self.local_size)
        self._queue.append(bucket)
        lane = self._direct_lane(buf.size)
        if lane is not None:  # a direct bucket: no flags, no node sum
            bucket.lane, bucket.number, bucket.stage = lane, lane.start(buf), _Bucket.DIRECT
            self._advance()
            return
        self._node_seq = bucket.seq
        self.shared.sync()  # the bucket's values are in memory before the flag says so
        self._flags[self.local_rank][READY] = bucket.seq
        self._advance()

    @property
    def direct_buckets(self) -> dict[str, int]:
        """Buckets started so far that went whole through an allreduce: "small" ones by the library's over all
        ranks, and "across", with one rank per node, straight to the cross-node allreduce."""
        return {"small": self._whole.started, "across": self._lane.started if self.local_size == 1 else 0}

    @property
    def in_flight(self) -> int:
        """Buckets started and not yet complete on this rank."""
        return len(self._queue)

    def progress(self) -> bool:
        """Advance without blocking; True when nothing is left in flight."""
        self._advance()
        return not self._queue

    def wait(self) -> None:
        """Block until every started bucket holds its sum on this rank and every rank of the node has
        copied what it needs from this rank's segment (so the caller may overwrite grad)."""
        while not self.progress():
            front = self._queue[0]
            if front.stage == _Bucket.DIRECT:
                # its allreduce holds every bucket it was given before this one: block inside MPI (C), which
                # advances every message this rank has in flight, instead of polling from Python
                front.lane.engine.wait()
            else:
                os.sched_yield()  # ranks may share cores: let the one we wait for run
        if self._node_seq == self._copied:
            return  # no bucket took the node path since the last wait: nobody reads this rank's segment
        self._copied = self._node_seq
        self._flags[self.local_rank][COPIED] = self._node_seq
        while not self._all_at(COPIED, self._node_seq):
            os.sched_yield()

    def close(self) -> None:
        """Collective: give the shared memory and the communicators back (the gradient view becomes invalid)."""
        self.shared.free()
        for lane in (self._lane, self._whole):
            if lane.engine is not None:
                lane.engine.close()
        self._cross_comm.free()
        self.node.free()

    # ---- the steps ----------------------------------------------------------------------------------
    def _direct_lane(self, size: int) -> _Lane | None:
        """The allreduce a bucket of `size` elements goes through whole, or None for the node path."""
        if size == 0:
            return None
        if size <= self.small_elements:
            return self._whole
        return self._lane if self.local_size == 1 and self.cross is not None else None

    def _all_at(self, flag: int, seq: int) -> bool:
        return all(int(f[flag]) >= seq for f in self._flags)

    def _advance(self) -> None:
        """Take every bucket as far as the flags and the cross-node allreduce allow, in start order."""
        self._lane.progress()
        self._whole.progress()
        for b in self._queue:
            if b.stage == _Bucket.WRITTEN:
                if not self._all_at(READY, b.seq):
                    break  # later buckets cannot be ready either
                self._sum_own_slice(b)
            if b.stage in (_Bucket.CROSSING, _Bucket.DIRECT) and b.lane.done(b.number):
                b.stage = _Bucket.REDUCED if b.stage == _Bucket.CROSSING else _Bucket.DONE
        # SUMMED goes up in start order (the cross-node allreduce completes in order; a bucket whose own slice
        # was empty and skipped it must not overtake one still in it); no rank reads a direct bucket's flag
        flags = self._flags[self.local_rank]
        for b in self._queue:
            if b.stage == _Bucket.REDUCED:
                self.shared.sync()
                flags[SUMMED] = b.seq
                b.stage = _Bucket.PUBLISHED
            elif b.stage not in (_Bucket.PUBLISHED, _Bucket.DIRECT, _Bucket.DONE):
                break
        while self._queue:
            b = self._queue[0]
            if b.stage == _Bucket.DONE:
                self._queue.pop(0)
            elif b.stage == _Bucket.PUBLISHED and self._all_at(SUMMED, b.seq):
                self._copy_other_slices(self._queue.pop(0))
            else:
                break

    def _sum_own_slice(self, b: _Bucket) -> None:
        """grad[own slice] = Σ over the node's ranks of their slice, then start its sum across nodes."""
        a, z = b.slice_of(self.local_rank)
        own = self.grad[a:z]
        for k, g in enumerate(self._grads):
            if k != self.local_rank:
                own += g[a:z]
        if self.cross is not None and z > a:
            b.lane, b.number, b.stage = self._lane, self._lane.start(own), _Bucket.CROSSING
        else:
            b.stage = _Bucket.REDUCED

    def _copy_other_slices(self, b: _Bucket) -> None:
        for k, g in enumerate(self._grads):
            if k != self.local_rank:
                a, z = b.slice_of(k)
                self.grad[a:z] = g[a:z]


class _Bucket:
    """One started bucket: its bounds, sequence number, and how far it has come on this rank."""

    # node path: WRITTEN → CROSSING (with h > 1) → REDUCED → PUBLISHED; a direct bucket: DIRECT → DONE
    WRITTEN, CROSSING, REDUCED, PUBLISHED, DIRECT, DONE = range(6)
    __slots__ = ("lo", "hi", "seq", "r", "stage", "lane", "number")

    def __init__(self, lo: int, hi: int, seq: int, r: int):
        self.lo, self.hi, self.seq, self.r = lo, hi, seq, r
        self.stage, self.lane, self.number = _Bucket.WRITTEN, None, 0

    def slice_of(self, k: int) -> tuple[int, int]:
        """[a, z) of local rank k's slice: the bucket cut into r nearly equal parts in rank order."""
        m = self.hi - self.lo
        return self.lo + m * k // self.r, self.lo + m * (k + 1) // self.r


class _Lane:
    """An allreduce that completes buffers in start order (or None), and how many it was given: buffer number k
    (1, 2, …) is done once fewer than (started − k + 1) are in flight."""

    __slots__ = ("engine", "started")

    def __init__(self, engine):
        self.engine, self.started = engine, 0

    def start(self, buf: np.ndarray) -> int:
        self.engine.start(buf)
        self.started += 1
        return self.started

    def done(self, number: int) -> bool:
        return self.started - self.engine.in_flight >= number

    def progress(self) -> None:
        if self.engine is not None and self.engine.in_flight:
            self.engine.progress()


def slice_elements(bucket: int, local_size: int) -> int:
    """Elements of the largest slice of a bucket of `bucket` elements cut among `local_size` ranks."""
    return -(-bucket // local_size)


def _offset(buf: np.ndarray, base: np.ndarray) -> int:
    """Index in base (flat, contiguous) where the contiguous view buf starts; ValueError if it is not inside."""
    start = (buf.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
    if buf.dtype != base.dtype or buf.ndim != 1 or not buf.flags.c_contiguous or not 0 <= start <= base.size - buf.size:
        raise ValueError(f"the hierarchical allreduce sums slices of its own gradient buffer ({base.dtype} "
                         f"{base.shape}), got {buf.dtype} {buf.shape}")
    return int(start)
