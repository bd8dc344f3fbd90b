"""--reproducible: bit-identical training for any rank count (the exact strategy).

Floating-point sums depend on their order, and the order of an allreduce and
of a rank's local sum depend on the rank count. Here they don't:
  1. each global batch is cut into fixed micro-blocks of `micro_batch` rows, and
     a rank computes whole blocks, one at a time (the same shapes, kernels and
     thread count wherever a block runs, so each block's gradient is the same bits);
  2. each block's gradient g is turned into integers q = rint(g·S) with one shared
     power-of-two scale S, and the integers are summed locally and over ranks (an
     int64 allreduce): integer sums are exact, so their order does not matter;
  3. ∇L = Σq / S.
S is chosen from the largest |g| seen in the previous step (agreed over ranks,
and itself independent of the rank count) with 2^8 headroom, so no sum can
overflow int64; if a step's gradient grows past the headroom anyway, every rank
sees it in the same MAX-allreduce and the step is recomputed with a new S.
Resolution: the largest element keeps about 62 − 8 − log2(blocks) bits, far more
than float32's 24; elements 2^40 times smaller than the largest are rounded away.
S depends on the previous step, so checkpoints store that step's largest |g|: a resumed run
continues with the same S and the same bits as one that never stopped.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange

from distbp import kernels
from distbp.shard import rank_slice
from distbp.sync.base import GradientSync, layers_with_nonfinite
from distbp.threads import thread_setter

HEADROOM_BITS = 8
INT_BITS = 62  # keep clear of int64's sign bit


@njit(parallel=True, cache=True)
def add_fixed_point(acc, g, scale):
    """acc (int64, n) += rint(g·scale) elementwise; g float32/float64 (n,), scale a power of two."""
    for i in prange(acc.shape[0]):
        acc[i] += np.int64(np.rint(np.float64(g[i]) * scale))


@njit(parallel=True, cache=True)
def from_fixed_point(out, acc, scale):
    """out (n,) = acc / scale, exactly rounded once to out's dtype."""
    for i in prange(acc.shape[0]):
        out[i] = np.float64(acc[i]) / scale


@njit(cache=True)
def max_abs(g):
    m = 0.0
    for i in range(g.shape[0]):
        v = abs(np.float64(g[i]))
        if v > m or v != v:
            m = v if v == v else np.inf
    return m


def block_aligned_slice(batch_rows: int, micro_batch: int, rank: int, size: int) -> tuple[int, int]:
    """This rank's rows of a global batch: whole micro-blocks, contiguous, blocks spread as evenly as possible."""
    n_blocks = -(-batch_rows // micro_batch)
    b0, b1 = rank_slice(n_blocks, rank, size)
    return b0 * micro_batch, min(b1 * micro_batch, batch_rows)


class ExactSync(GradientSync):
    """Computes this rank's blocks one at a time and sums their gradients over all ranks exactly."""

    name = "exact"
    algorithm = "mpi"  # the integer sums go through MPI's allreduce

    def my_rows(self, batch_rows: int) -> tuple[int, int]:
        return block_aligned_slice(batch_rows, self.options.micro_batch, self.layout.rank, self.layout.size)

    @property
    def rows_at_once(self) -> int:
        return min(self.options.micro_batch, self.options.batch_size)  # one block

    def memory(self) -> dict[str, int]:
        P, item = self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        return {"gradients": 2 * P * item,  # ∇L and one block's gradient
                "optimizer_state": self.options.optimizer_state_bytes(P, self.shape.dtype),
                "allreduce_scratch": 8 * P}  # the int64 sum

    def describe(self) -> str:
        where = " (MPI)" if self.layout.size > 1 else ""
        return (f"exact int64 allreduce{where}, micro-blocks of {self.options.micro_batch} rows on one thread "
                "(reproducible)")

    def build(self, comm, model) -> None:
        super().build(comm, model)
        self.grad = np.zeros(model.n_params, model.dtype)
        self.acc = np.zeros(model.n_params, np.int64)
        self.block_grad = np.empty_like(self.grad)
        self.optimizer = self.options.make_optimizer(model.n_params, model.dtype)
        self.prev_max: float | None = None
        self._set_threads = None  # made on first use, once every BLAS library is loaded
        self.reset_stats()

    @property
    def stats(self) -> dict:
        return self._stats

    def reset_stats(self) -> None:
        self._stats = {"exposed_s": 0.0, "overlap_s": 0.0, "recomputed": 0, "steps": 0}

    def _scale(self, max_abs_g: float | None, n_blocks: int) -> float:
        if not max_abs_g or not math.isfinite(max_abs_g):
            return 2.0 ** 40
        bound = 2.0 ** INT_BITS / n_blocks  # per-block limit so that n_blocks blocks cannot overflow
        return 2.0 ** math.floor(math.log2(bound / (max_abs_g * 2.0 ** HEADROOM_BITS)))

    def local_gradient(self, gather, rows, batch_rows) -> tuple[float, float]:
        """(Σ loss, correct) over this rank's blocks; ∇L over all ranks, exactly, into grad."""
        n_blocks = -(-batch_rows // self.options.micro_batch)
        scale = self._scale(self.prev_max, n_blocks)
        while True:
            loss, correct, local_max = self._one_thread(gather, rows, scale)
            t0 = time.perf_counter()
            global_max = self.comm.max_scalar(local_max)  # [dist] the same decision on every rank
            self._stats["exposed_s"] += time.perf_counter() - t0
            if not math.isfinite(global_max):
                self.grad[...] = np.nan  # the loop's non-finite check reports it
                return loss, correct
            if global_max * scale * n_blocks < 2.0 ** INT_BITS:
                break
            self._stats["recomputed"] += 1
            scale = self._scale(global_max, n_blocks)
        t0 = time.perf_counter()
        self.comm.allreduce_sum(self.acc)  # [dist] integers: exact, any order
        self._stats["exposed_s"] += time.perf_counter() - t0
        from_fixed_point(self.grad, self.acc, scale)
        self.prev_max = global_max
        self._stats["steps"] += 1
        return loss, correct

    def _one_thread(self, gather, rows, scale) -> tuple[float, float, float]:
        # a block's gradient must be the same bits wherever it runs, whatever the rank's thread count:
        # compute blocks on one thread (Numba and BLAS), then give the rank its threads back
        import numba

        if self._set_threads is None:
            self._set_threads = thread_setter()
        threads = numba.get_num_threads()
        self._set_threads(1)
        try:
            return self._blocks(gather, rows, scale)
        finally:
            self._set_threads(threads)

    def _blocks(self, gather, rows, scale) -> tuple[float, float, float]:
        """Σ loss, correct and the largest |g| over this rank's blocks; acc = Σ_blocks rint(g·scale)."""
        self.acc[...] = 0
        loss, correct, m = 0.0, 0.0, 0.0
        for s in range(0, rows.shape[0], self.options.micro_batch):
            X, y = gather(rows[s:s + self.options.micro_batch])
            loss += self.model.loss_and_grad_into(X, y, self.block_grad, validate=False)
            correct += self.model.count_correct(y)
            m = max(m, max_abs(self.block_grad))
            add_fixed_point(self.acc, self.block_grad, scale)
        return loss, correct, m

    def all_finite(self) -> bool:
        return bool(kernels.all_finite(self.grad))

    def nonfinite_layers(self) -> list[str]:
        return layers_with_nonfinite(np.flatnonzero(~np.isfinite(self.grad)), self.shape.sizes)

    def apply(self, params: np.ndarray, scale: float) -> None:
        self.optimizer.step(params, self.grad, scale)

    @property
    def optimizer_steps(self) -> int:
        return self.optimizer.step_count

    def checkpoint_state(self):
        return self.optimizer.state_arrays(), {"prev_max_abs_gradient": self.prev_max}

    def load_checkpoint_state(self, arrays, meta, optimizer_steps) -> None:
        self.optimizer.load_state(arrays, optimizer_steps)
        self.prev_max = meta.get("prev_max_abs_gradient")  # absent in checkpoints of older versions

    def buffers(self) -> list[np.ndarray]:
        return [self.grad, self.acc, self.block_grad] + list(self.optimizer.state_arrays().values())
