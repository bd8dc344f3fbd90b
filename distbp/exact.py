"""--reproducible: bit-identical training for any rank count.

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
"""

from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange

from distbp.comm import Comm

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
    from distbp.shard import rank_slice

    n_blocks = -(-batch_rows // micro_batch)
    b0, b1 = rank_slice(n_blocks, rank, size)
    return b0 * micro_batch, min(b1 * micro_batch, batch_rows)


class ExactReducer:
    """Computes this rank's blocks and sums their gradients over all ranks exactly (see module docstring)."""

    algorithm = "mpi"  # the integer sums go through MPI's allreduce

    def __init__(self, comm: Comm, grad: np.ndarray, micro_batch: int):
        self.comm, self.grad, self.micro_batch = comm, grad, micro_batch
        self.acc = np.zeros(grad.shape[0], np.int64)
        self.block_grad = np.empty_like(grad)
        self.prev_max: float | None = None
        self._set_threads = None  # threads.thread_setter(), made on first use
        self.stats = {"exposed_s": 0.0, "overlap_s": 0.0, "recomputed": 0, "steps": 0}

    def reset_stats(self) -> None:
        self.stats.update(exposed_s=0.0, overlap_s=0.0, recomputed=0, steps=0)

    def _scale(self, max_abs_g: float | None, n_blocks: int) -> float:
        if not max_abs_g or not math.isfinite(max_abs_g):
            return 2.0 ** 40
        bound = 2.0 ** INT_BITS / n_blocks  # per-block limit so that n_blocks blocks cannot overflow
        return 2.0 ** math.floor(math.log2(bound / (max_abs_g * 2.0 ** HEADROOM_BITS)))

    def compute(self, model, X: np.ndarray, y: np.ndarray, batch_rows: int, count=None) -> tuple[float, float]:
        """(Σ loss, Σ count(model, y_block)) over this rank's rows (X, y: whole blocks); ∇L over all ranks into grad."""
        n_blocks = -(-batch_rows // self.micro_batch)
        scale = self._scale(self.prev_max, n_blocks)
        while True:
            loss, correct, local_max = self._local_sum(model, X, y, scale, count)
            t0 = time.perf_counter()
            global_max = self.comm.max_scalar(local_max)  # [dist] the same decision on every rank
            self.stats["exposed_s"] += time.perf_counter() - t0
            if not math.isfinite(global_max):
                self.grad[...] = np.nan  # the caller's non-finite check reports it
                return loss, correct
            if global_max * scale * n_blocks < 2.0 ** INT_BITS:
                break
            self.stats["recomputed"] += 1
            scale = self._scale(global_max, n_blocks)
        t0 = time.perf_counter()
        self.comm.allreduce_sum(self.acc)  # [dist] integers: exact, any order
        self.stats["exposed_s"] += time.perf_counter() - t0
        from_fixed_point(self.grad, self.acc, scale)
        self.prev_max = global_max
        self.stats["steps"] += 1
        return loss, correct

    def _local_sum(self, model, X, y, scale, count) -> tuple[float, float, float]:
        # a block's gradient must be the same bits wherever it runs, whatever the rank's thread count:
        # compute blocks on one thread (Numba and BLAS), then give the rank its threads back
        import numba

        if self._set_threads is None:
            from distbp.threads import thread_setter
            self._set_threads = thread_setter()
        threads = numba.get_num_threads()
        self._set_threads(1)
        try:
            return self._blocks(model, X, y, scale, count)
        finally:
            self._set_threads(threads)

    def _blocks(self, model, X, y, scale, count) -> tuple[float, float, float]:
        self.acc[...] = 0
        loss, correct, m = 0.0, 0.0, 0.0
        for s in range(0, X.shape[0], self.micro_batch):
            e = min(s + self.micro_batch, X.shape[0])
            loss += model.loss_and_grad_into(X[s:e], y[s:e], self.block_grad, validate=False)
            if count is not None:
                correct += count(model, y[s:e])
            m = max(m, max_abs(self.block_grad))
            add_fixed_point(self.acc, self.block_grad, scale)
        return loss, correct, m
