"""The gradient's way over the ranks: buckets, and their overlap with the backward pass.

`GradientReducer` sums the flat gradient over ranks in buckets that start while the backward pass is
still running (output layer first); how a bucket is summed is its transport's business
(`distbp.sync.transports`: MPI's Iallreduce, distbp's ring or the hierarchical allreduce, optionally
16-bit compressed). `ShardedGradientReducer` reduce-scatters the same buckets into the ranks' parts
instead. Both call only the public `Comm` interface and the transport's; the MPI calls live in `distbp.comm`.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from distbp.comm.base import PIECE_BYTES, Comm
from distbp.observe.trace import NULL_TRACER
from distbp.sync.transports import MpiTransport, Transport

# ---------------------------------------------------------------------------------------------
# bucketed, overlapped gradient allreduce
# ---------------------------------------------------------------------------------------------

class Bucket(NamedTuple):
    """grad[start:stop] travels in one allreduce once every layer in `layers` has its gradient."""

    start: int
    stop: int
    layers: tuple[int, ...]


def bucket_layout(layer_slices: list[slice], n: int, itemsize: int, bucket_bytes: int) -> list[Bucket]:
    """Buckets of a flat gradient of n elements, in the order the backward pass completes them.

    layer_slices must tile range(n) in layer order. Buckets are formed from the last layer
    backwards, each a contiguous run of whole layers of at most bucket_bytes, except that a
    layer bigger than bucket_bytes is cut into equal pieces of at most bucket_bytes each.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    expected = 0
    for l, s in enumerate(layer_slices):
        if s.step not in (None, 1) or s.start != expected or s.stop <= s.start:
            raise ValueError(f"layer_slices must tile the gradient in order; layer {l} is {s}, expected start {expected}")
        expected = s.stop
    if expected != n:
        raise ValueError(f"layer_slices cover {expected} elements but the gradient has {n}")
    cap = max(1, bucket_bytes // itemsize)
    buckets: list[Bucket] = []
    run: list[int] = []  # layers of the bucket being filled, last layer first

    def close_run():
        if run:
            buckets.append(Bucket(layer_slices[run[-1]].start, layer_slices[run[0]].stop, tuple(run)))
            run.clear()

    for l in reversed(range(len(layer_slices))):
        s = layer_slices[l]
        if s.stop - s.start > cap:
            close_run()
            pieces = -(-(s.stop - s.start) // cap)
            bounds = np.linspace(s.start, s.stop, pieces + 1).round().astype(int)
            for k in reversed(range(pieces)):
                buckets.append(Bucket(int(bounds[k]), int(bounds[k + 1]), (l,)))
            continue
        if run and layer_slices[run[0]].stop - s.start > cap:
            close_run()
        run.append(l)
    close_run()
    return buckets


class GradientReducer:
    """Sums a flat gradient over ranks in buckets, started while the backward pass is still running.

    grad: flat float32/float64 gradient (n,); layer_slices[l]: layer l's (dW, db) part of it.
    Usage per step: backward calls layer_ready(l) as each layer's gradient completes (last layer
    first) and progress() between compute chunks; finish() before the update. After finish, grad
    holds the sum over ranks on every rank. Do not write a layer's gradient after layer_ready.

    overlap=True starts each bucket's sum (transport.start) as soon as all its layers are ready, in
    the fixed bucket order (so every rank starts the same collectives in the same order). Transports,
    like MPI, only advance inside their own calls, hence progress(). overlap=False starts every
    bucket in finish(), except that a transport that sums the buffer's own values with MPI
    (`whole_blocking`: MPI's, uncompressed) does one blocking allreduce of the whole buffer (in 16 MiB
    pieces) instead.

    transport (`distbp.sync.transports`, built for grad's size and dtype; default: MPI's Iallreduce,
    uncompressed): "mpi" uses the MPI library's Iallreduce/Allreduce; "ring" uses distbp's ring of
    point-to-point messages (`distbp.comm.ring.RingAllreduce`), which on one node here was faster than
    MPICH's and needs one scratch array of bucket/p elements instead of a message-sized temporary per
    call (benchmarks/allreduce.py); "hier" sums on a node in shared memory (grad must be its buffer).

    A transport's codec compresses each bucket to 16 bits for the wire (`distbp.comm.codecs`):
      "bfloat16": upper 16 bits of float32, round to nearest even; relative error ~2^-8 per
        rounding, same range as float32.
      "float16": relative error ~2^-11 per rounding, but values above 65504 become inf and values
        below ~6e-8 flush to zero: scale the loss if gradients are large or tiny.
    With "mpi" each bucket is encoded into a 16-bit copy and summed by a user-defined MPI op that
    adds in float32 and rounds back after every partial sum: each element is rounded once on
    encoding and once per partial sum (at most p-1 times). With "ring" the bucket stays in grad and
    the ring encodes what it sends, adds what it receives in grad's dtype and rounds each completed
    sum once (`RingAllreduce`): once per reduce-scatter hop (p-1) and once at the end. Either way
    |error| <= p * u * sum_r |g_r| to first order, u = 2^-8 (bf16) or 2^-11 (fp16). Measured on 2^20
    normal values: MPI op max 1.95u with 2 ranks, 2.30u with 4, median 0.3u; ring (bf16) max 1.89u with
    2 ranks, 2.79u with 4, median 0.27u / 0.23u (tests/mpi/test_comm_mpi.py).
    A 1-rank run (SerialComm) applies the same encode/decode rounding, so results do not jump when
    going from one rank to several.

    alone=True says that the sum over ranks is grad itself (one rank, and a transport that sums without a
    codec: the strategy knows): no bucket is started and nothing waited for, and the stats count the buckets as
    handed over (bytes, calls, steps), with no seconds. While --trace records, the buckets go through the
    transport as always, so that the buckets track shows them.

    stats: exposed_s (seconds waiting in finish), overlap_s (seconds in layer_ready/progress),
    bytes (bytes handed to allreduce on this rank), calls (allreduce calls), steps (finish calls).
    """

    def __init__(self, comm: Comm, grad: np.ndarray, layer_slices: list[slice], bucket_bytes: int = 4 << 20,
                 overlap: bool = True, transport: Transport | None = None, alone: bool = False):
        if grad.ndim != 1 or not grad.flags.c_contiguous or grad.dtype not in (np.float32, np.float64):
            raise ValueError(f"grad must be a flat contiguous float32/float64 array, got {grad.dtype} {grad.shape}")
        self.comm, self.grad, self.overlap = comm, grad, overlap
        self.transport = transport if transport is not None else MpiTransport(comm, grad.size, grad.dtype)
        if self.transport.dtype != grad.dtype:
            raise ValueError(f"the transport was built for {self.transport.dtype}, the gradient is {grad.dtype}")
        self.buckets = bucket_layout(layer_slices, grad.size, grad.itemsize, bucket_bytes)
        self._wire_itemsize = self.transport.wire_itemsize  # bytes per element sent
        self._buckets_of_layer: list[list[int]] = [[] for _ in layer_slices]
        for i, b in enumerate(self.buckets):
            for l in b.layers:
                self._buckets_of_layer[l].append(i)
        self._n_layers = len(layer_slices)
        if alone and comm.size != 1:
            raise ValueError(f"alone=True is for one rank; this communicator has {comm.size}")
        self.alone = alone
        # what one step hands to the transport (the stats of a step that `alone` skips)
        self._step_bytes, self._step_calls = self._step_counts()
        self.trace = NULL_TRACER  # --trace: each bucket an async slice from its start to its completion
        self._open: list[tuple[int, int]] = []  # (bucket, trace id) started and not yet seen complete
        self._new_step()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {"exposed_s": 0.0, "overlap_s": 0.0, "bytes": 0, "calls": 0, "steps": 0}

    def _step_counts(self) -> tuple[int, int]:
        """(bytes, calls) one step hands to the transport: the whole buffer in pieces (blocking, uncompressed MPI),
        else every bucket once."""
        if not self.overlap and self.transport.whole_blocking:
            return self.grad.nbytes, -(-self.grad.nbytes // PIECE_BYTES)
        return sum(b.stop - b.start for b in self.buckets) * self._wire_itemsize, len(self.buckets)

    def skips(self) -> bool:
        """This step sums nothing: one rank (`alone`), and no trace to show the buckets in."""
        return self.alone and not self.trace.on

    def _new_step(self) -> None:
        self._layer_done = [False] * self._n_layers
        self._missing = [len(b.layers) for b in self.buckets]
        self._next = 0  # first bucket not started yet

    def _traced_start(self, i: int) -> None:
        """start_bucket(i), and its async slice on the trace's buckets track."""
        if self.trace.on:
            b = self.buckets[i]
            ident = self.trace.async_begin(f"bucket {i}", bucket=i, layers=list(b.layers),
                                           bytes=int((b.stop - b.start) * self.grad.itemsize))
            self._open.append((i, ident))
        self.start_bucket(i)

    def _traced_done(self, still_in_flight: int = 0) -> None:
        """The started buckets but the last `still_in_flight` are complete: end their async slices."""
        done = max(0, len(self._open) - still_in_flight)
        for i, ident in self._open[:done]:
            self.trace.async_end(f"bucket {i}", ident)
        del self._open[:done]

    def start_bucket(self, i: int) -> None:
        """Start bucket i's sum over ranks (subclasses change what a bucket's collective is)."""
        b = self.buckets[i]
        self.transport.start(self.grad[b.start:b.stop])
        self.stats["bytes"] += (b.stop - b.start) * self._wire_itemsize
        self.stats["calls"] += 1

    def layer_ready(self, layer: int) -> None:
        """Layer's gradient is complete: start every bucket that is now complete (overlap=True)."""
        if self._layer_done[layer]:
            raise ValueError(f"layer {layer} reported ready twice in one step")
        self._layer_done[layer] = True
        if self.skips():
            return
        t0 = time.perf_counter()
        for i in self._buckets_of_layer[layer]:
            self._missing[i] -= 1
        if self.overlap:
            while self._next < len(self.buckets) and self._missing[self._next] == 0:
                self._traced_start(self._next)
                self._next += 1
            self._advance()
        self.stats["overlap_s"] += time.perf_counter() - t0

    def _advance(self) -> None:
        if self.trace.on:
            with self.trace.span("progress", in_flight=len(self._open)):
                self._advance_now()
        else:
            self._advance_now()

    def _advance_now(self) -> None:
        self.transport.progress()
        if self._open:
            self._traced_done(self.transport.in_flight)  # buckets complete in the order they started

    def progress(self) -> None:
        """Let the transport advance the outstanding sums (MPI only does so inside Test/Wait)."""
        if self._next > 0:  # something was started this step
            t0 = time.perf_counter()
            self._advance()
            self.stats["overlap_s"] += time.perf_counter() - t0

    def reduce_blocking(self) -> None:
        """overlap=False: one blocking allreduce of the whole gradient (in pieces)."""
        self.comm.allreduce_sum(self.grad)
        self.stats["bytes"] += self.grad.nbytes
        self.stats["calls"] += -(-self.grad.nbytes // PIECE_BYTES)

    def finish(self) -> None:
        """Start what is not started, wait for everything; afterwards grad holds the sum over ranks."""
        if self.skips():
            self._layer_done = [False] * self._n_layers  # nothing else of the step's state moved
            self.stats["bytes"] += self._step_bytes
            self.stats["calls"] += self._step_calls
            self.stats["steps"] += 1
            return
        t0 = time.perf_counter()
        if not self.overlap and self.transport.whole_blocking:
            with self.trace.span("blocking allreduce", bytes=int(self.grad.nbytes)):
                self.reduce_blocking()
        else:
            while self._next < len(self.buckets):
                self._traced_start(self._next)
                self._next += 1
            with self.trace.span("wait", in_flight=len(self._open)):
                self.transport.wait()
            self._traced_done()
        self._new_step()
        self.stats["exposed_s"] += time.perf_counter() - t0
        self.stats["steps"] += 1


class ShardedGradientReducer(GradientReducer):
    """A GradientReducer whose buckets are reduce-scattered into the owners' parts, not allreduced.

    part: this rank's part of ∇L; bounds[r] = (lo, hi) of rank r's part of the flat gradient. A bucket
    [start, stop) goes to every rank whose part overlaps it (the others get zero elements). After
    finish(), part holds this rank's piece of Σ_ranks grad (grad itself is left as this rank's own).
    """

    def __init__(self, comm: Comm, grad: np.ndarray, layer_slices: list[slice], part: np.ndarray,
                 bounds: list[tuple[int, int]], bucket_bytes: int = 4 << 20, overlap: bool = True):
        # MPI's collectives, uncompressed: it holds the reduce-scatters' handles
        self.mpi = MpiTransport(comm, grad.size, grad.dtype)
        super().__init__(comm, grad, layer_slices, bucket_bytes=bucket_bytes, overlap=overlap, transport=self.mpi)
        self.part, self.bounds = part, bounds
        lo, hi = bounds[comm.rank]
        self._scatter = []  # per bucket: (elements each rank receives, this rank's receive view)
        for b in self.buckets:
            counts = [max(0, min(b.stop, h) - max(b.start, l)) for l, h in bounds]
            first = min(max(b.start, lo), hi)
            self._scatter.append((counts, part[first - lo:first - lo + counts[comm.rank]]))

    def start_bucket(self, i: int) -> None:
        b = self.buckets[i]
        counts, recv = self._scatter[i]
        self.mpi.track(self.comm.start_reduce_scatter(self.grad[b.start:b.stop], recv, counts))
        self.stats["bytes"] += (b.stop - b.start) * self.grad.itemsize
        self.stats["calls"] += 1

    def reduce_blocking(self) -> None:
        counts = [h - l for l, h in self.bounds]
        self.comm.wait_all([self.comm.start_reduce_scatter(self.grad, self.part, counts)])
        self.stats["bytes"] += self.grad.nbytes
        self.stats["calls"] += 1

