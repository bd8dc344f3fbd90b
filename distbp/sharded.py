"""--shard-optimizer: optimizer state split over the ranks (ZeRO stage 1).

Instead of every rank holding the whole optimizer state and applying the whole
update, rank r owns a contiguous part θ[lo_r:hi_r] (parts differ by at most one
element):
  1. reduce-scatter (SUM) of the local gradients gives rank r its part of ∇L; like the
     allreduce it goes bucket by bucket while the backward pass runs
     (`ShardedGradientReducer`), each bucket scattered to the ranks owning pieces of it;
  2. rank r updates θ[lo_r:hi_r] with its part of the optimizer state;
  3. allgather of the parts gives every rank the whole new θ.
Reduce-scatter + allgather move the same bytes as one ring allreduce, and
optimizer memory per rank drops by the rank count. The update of each element
is the same arithmetic as unsharded, so the parameters are the same bits.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from distbp.comm import Comm
from distbp.reducer import GradientReducer
from distbp.shard import rank_slice


class ShardedOptimizer:
    """Wraps an optimizer made for this rank's part (`make(n)` builds one for n elements)."""

    def __init__(self, comm: Comm, make: Callable[[int], object], n_params: int, dtype):
        self.comm = comm
        self.bounds = [rank_slice(n_params, r, comm.size) for r in range(comm.size)]
        self.counts = [hi - lo for lo, hi in self.bounds]
        self.lo, self.hi = self.bounds[comm.rank]
        self.inner = make(self.hi - self.lo)
        self.grad_part = np.empty(self.hi - self.lo, dtype)  # this rank's part of ∇L (ShardedGradientReducer)
        self.name = self.inner.name

    @property
    def step_count(self) -> int:
        return self.inner.step_count

    def step(self, params: np.ndarray, scale: float = 1.0) -> None:
        """Update this rank's part of params from grad_part, then [dist] allgather every part."""
        self.inner.step(params[self.lo:self.hi], self.grad_part, scale)
        self.comm.allgather_parts(params, self.counts)

    def nonfinite_parts(self, layer_slices: list[slice], sizes: list[int]) -> list[str]:
        """Collective: 'layer l dW|db' for each layer with NaN/Inf in any rank's part of ∇L."""
        bad = np.flatnonzero(~np.isfinite(self.grad_part)) + self.lo
        mine = []
        for l, (sl, fi, fo) in enumerate(zip(layer_slices, sizes[:-1], sizes[1:])):
            w_end = sl.start + fi * fo
            if ((bad >= sl.start) & (bad < w_end)).any():
                mine.append(f"layer {l} dW")
            if ((bad >= w_end) & (bad < sl.stop)).any():
                mine.append(f"layer {l} db")
        found = set().union(*self.comm.allgather_object(mine))
        return sorted(found, key=lambda name: (int(name.split()[1]), name))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """This rank's part of the optimizer state."""
        return self.inner.state_arrays()

    def full_state(self) -> dict[str, np.ndarray | None]:
        """Collective: the whole optimizer state on the root (None elsewhere), for checkpoints."""
        return {k: self.comm.gather_parts(v, self.counts) for k, v in self.inner.state_arrays().items()}

    def load_state(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        """From the whole state (a checkpoint of any rank count): keep this rank's part."""
        self.inner.load_state({k: v[self.lo:self.hi] for k, v in arrays.items()}, step_count)


class ShardedGradientReducer(GradientReducer):
    """A GradientReducer whose buckets are reduce-scattered into the owners' parts, not allreduced.

    part: this rank's part of ∇L (ShardedOptimizer.grad_part); bounds[r] = (lo, hi) of rank r's part of
    the flat gradient. A bucket [start, stop) goes to every rank whose part overlaps it (the others get
    zero elements). After finish(), part holds this rank's piece of Σ_ranks grad.
    """

    def __init__(self, comm: Comm, grad: np.ndarray, layer_slices: list[slice], part: np.ndarray,
                 bounds: list[tuple[int, int]], bucket_bytes: int = 4 << 20, overlap: bool = True):
        super().__init__(comm, grad, layer_slices, bucket_bytes=bucket_bytes, overlap=overlap)
        self.part, self.bounds = part, bounds
        lo, hi = bounds[comm.rank]
        self._scatter = []  # per bucket: (elements each rank receives, this rank's receive view)
        for b in self.buckets:
            counts = [max(0, min(b.stop, h) - max(b.start, l)) for l, h in bounds]
            first = min(max(b.start, lo), hi)
            self._scatter.append((counts, part[first - lo:first - lo + counts[comm.rank]]))

    def _start(self, i: int) -> None:
        b = self.buckets[i]
        counts, recv = self._scatter[i]
        self._handles.append(self.comm._start_reduce_scatter(self.grad[b.start:b.stop], recv, counts))
        self.stats["bytes"] += (b.stop - b.start) * self.grad.itemsize
        self.stats["calls"] += 1

    def _reduce_blocking(self) -> None:
        counts = [h - l for l, h in self.bounds]
        self.comm._wait_all([self.comm._start_reduce_scatter(self.grad, self.part, counts)])
        self.stats["bytes"] += self.grad.nbytes
        self.stats["calls"] += 1
