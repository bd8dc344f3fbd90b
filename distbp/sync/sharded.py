"""--shard-optimizer: optimizer state split over the ranks (ZeRO stage 1).

Instead of every rank holding the whole optimizer state and applying the whole update, rank r owns a
contiguous part θ[lo_r:hi_r] (parts differ by at most one element):
  1. reduce-scatter (SUM) of the local gradients gives rank r its part of ∇L; like the allreduce it
     goes bucket by bucket while the backward pass runs (`reducer.ShardedGradientReducer`), each
     bucket scattered to the ranks owning pieces of it;
  2. rank r updates θ[lo_r:hi_r] with its part of the optimizer state;
  3. allgather of the parts gives every rank the whole new θ.
What needs all of ∇L or θ is made of the parts' sums: --clip-grad-norm's norm from each part's sum of
squares (one scalar allreduce), the layer norms of lars and lamb from each part's per-layer sums (one
allreduce of an (n_layers, 2) array; a part may hold pieces of several layers, and a layer, even its W
or b, may be cut between parts: `optim.segments_of` says which piece is which).
Reduce-scatter + allgather move the same bytes as one ring allreduce, and optimizer memory per rank
drops by the rank count. The update of each element is the same arithmetic as unsharded, so the
parameters are the same bits (with clipping, lars or lamb: up to the rounding of the norms, whose sums
add the parts in another order). Checkpoints hold the whole state (gathered on the root), so a run
can resume on any rank count.
"""

from __future__ import annotations

import numpy as np

from distbp.data.shard import rank_slice
from distbp.nn import kernels
from distbp.nn.grain import sized
from distbp.nn.optim import segments_of
from distbp.sync.base import layers_with_nonfinite
from distbp.sync.bucketed import BucketedSync
from distbp.sync.reducer import ShardedGradientReducer


class ShardedSync(BucketedSync):
    name = "sharded"
    algorithm = "mpi"  # reduce-scatter and allgather are the MPI library's

    def __init__(self, options, layout, shape):
        super().__init__(options, layout, shape)
        self.bounds = [rank_slice(shape.n_params, r, layout.size) for r in range(layout.size)]
        self.counts = [hi - lo for lo, hi in self.bounds]
        self.lo, self.hi = self.bounds[layout.rank]

    def memory(self) -> dict[str, int]:
        part, item = self.hi - self.lo, np.dtype(self.shape.dtype).itemsize
        return {"gradients": self.gradient_bytes() + part * item,  # + this rank's part of ∇L
                "optimizer_state": self.options.optimizer_state_bytes(part, self.shape.dtype),
                "allreduce_scratch": 0}

    def describe(self) -> str:
        o = self.options
        text = (f"reduce-scatter {'overlapped' if o.overlap else 'blocking'} (MPI), {o.optimizer} state sharded "
                f"over {self.layout.size} rank(s), parameter allgather")
        return text + (f", accumulate {o.accumulate}" if o.accumulate > 1 else "")

    def build(self, comm, model) -> None:
        super().build(comm, model)
        o = self.options
        self.part = np.empty(self.hi - self.lo, model.dtype)  # this rank's part of ∇L
        self.reducer = ShardedGradientReducer(comm, self.grad, model.layer_slices, self.part, self.bounds,
                                              bucket_bytes=o.bucket_bytes, overlap=o.overlap)
        # [dist] per-layer sums of lars and lamb: this part's, summed over all ranks' parts
        self.optimizer = o.make_optimizer(self.hi - self.lo, model.dtype, segments_of(model.sizes, self.lo, self.hi),
                                          sum_over_ranks=comm.allreduce_sum)

    def all_finite(self) -> bool:
        return bool(sized(kernels.all_finite, self.part.size)(self.part))

    def nonfinite_layers(self) -> list[str]:
        # each rank sees only its part of ∇L: name the layers of its bad elements, then [dist] unite the names
        mine = layers_with_nonfinite(np.flatnonzero(~np.isfinite(self.part)) + self.lo, self.shape.sizes)
        found = set().union(*self.comm.allgather_object(mine))
        return sorted(found, key=lambda name: (int(name.split()[1]), name))

    def apply(self, params: np.ndarray, scale: float) -> None:
        """Update this rank's part of params from its part of ∇L, then [dist] allgather every part."""
        if self.clip.max_norm:
            # [dist] ‖∇L‖² is the sum of the parts' sums of squares: one scalar allreduce, the same on every rank
            sum_sq = self.comm.sum_scalars([sized(kernels.sum_of_squares, self.part.size)(self.part)])[0]
            scale = self.clip.clipped_scale(scale, sum_sq)
        self.optimizer.step(params[self.lo:self.hi], self.part, scale)
        self.comm.allgather_parts(params, self.counts)

    @property
    def optimizer_steps(self) -> int:
        return self.optimizer.step_count

    def checkpoint_state(self):
        # [dist] the whole optimizer state on the root (None elsewhere)
        return {k: self.comm.gather_parts(v, self.counts) for k, v in self.optimizer.state_arrays().items()}, {}

    def load_checkpoint_state(self, arrays, meta, optimizer_steps) -> None:
        """From the whole state (a checkpoint of any rank count): keep this rank's part."""
        self.optimizer.load_state({k: v[self.lo:self.hi] for k, v in arrays.items()}, optimizer_steps)
