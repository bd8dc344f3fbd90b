"""--shard-optimizer: optimizer state split over the ranks (ZeRO stage 1).

Instead of every rank holding the whole optimizer state and applying the whole
update, rank r owns a contiguous part θ[lo_r:hi_r] (parts differ by at most one
element):
  1. reduce-scatter (SUM) of the local gradients gives rank r its part of ∇L;
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
from distbp.shard import rank_slice


class ShardedOptimizer:
    """Wraps an optimizer made for this rank's part (`make(n)` builds one for n elements)."""

    def __init__(self, comm: Comm, make: Callable[[int], object], n_params: int, dtype):
        self.comm = comm
        bounds = [rank_slice(n_params, r, comm.size) for r in range(comm.size)]
        self.counts = [hi - lo for lo, hi in bounds]
        self.lo, self.hi = bounds[comm.rank]
        self.inner = make(self.hi - self.lo)
        self.grad_part = np.empty(0, dtype)  # this rank's part of ∇L: a view into the gradient after reduce
        self.name = self.inner.name

    @property
    def step_count(self) -> int:
        return self.inner.step_count

    def reduce(self, grad: np.ndarray) -> None:
        """[dist] this rank's part of ∇L = Σ_ranks grad, in place: grad_part = grad[:part size].

        The rest of grad is overwritten by the reduce-scatter; it is not needed after it.
        """
        self.comm.reduce_scatter_sum(grad, self.counts)
        self.grad_part = grad[:self.hi - self.lo]

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
