"""The part that the allreduce and the sharded strategies share: the local gradient in K micro-batches,
its buckets handed to a reducer while the backward pass runs.

With K = --accumulate micro-batches per rank share, micro-batch 0 is computed into `acc`, micro-batches
1…K−2 into `grad` and then added to `acc`, and the last one into `grad`, each layer of `acc` added to
`grad` the moment the backward pass finishes that layer (`AddAccumulated`). So:
  - one sum over ranks per global batch, whatever K;
  - the buckets of the last backward pass still go out while it runs, as with K = 1;
  - memory: one more gradient-sized buffer (acc), and activations for 1/K of the rows.
The sum over micro-batches is Σ (K partial sums), so K changes the result only by rounding order.
"""

from __future__ import annotations

import numpy as np

from distbp.data.shard import rank_slice
from distbp.sync.base import Gather, GradientSync
from distbp.sync.reducer import GradientReducer


class BucketedSync(GradientSync):
    """Local gradient (with accumulation) into `grad`, its buckets summed by `self.reducer`."""

    reducer: GradientReducer

    @property
    def rows_at_once(self) -> int:
        return -(-super().rows_at_once // self.options.accumulate)  # one micro-batch

    def gradient_bytes(self) -> int:
        """The local gradient, and the accumulated one with --accumulate."""
        P, item = self.shape.n_params, np.dtype(self.shape.dtype).itemsize
        return P * item * (2 if self.options.accumulate > 1 else 1)

    def build(self, comm, model) -> None:
        super().build(comm, model)
        self.grad = np.zeros(model.n_params, model.dtype)
        self.acc = np.zeros(model.n_params, model.dtype) if self.options.accumulate > 1 else None

    def local_gradient(self, gather: Gather, rows: np.ndarray, batch_rows: int) -> tuple[float, float]:
        K, k = self.options.accumulate, rows.shape[0]
        if K == 1:  # the whole share in one pass; its buckets leave as the layers finish (none when summing alone)
            return self._pass(gather, rows, self.grad, None if self.reducer.skips() else self.reducer)
        loss = correct = 0.0
        for i in range(K):
            a, b = rank_slice(k, i, K)
            last = i == K - 1
            # micro-batch 0 starts acc; later ones go into grad (then added to acc, or, for the last, acc
            # is added into grad layer by layer so that finished buckets can leave during the backward pass)
            target = self.grad if (last or i > 0) else self.acc
            hooks = AddAccumulated(self.acc, self.grad, self.model.layer_slices, self.reducer) if last else None
            part_loss, part_correct = self._pass(gather, rows[a:b], target, hooks)
            loss += part_loss
            correct += part_correct
            if 0 < i < K - 1:
                self.acc += self.grad
        return loss, correct

    def _pass(self, gather: Gather, rows: np.ndarray, target: np.ndarray, hooks) -> tuple[float, float]:
        """(Σ loss, correct) over `rows`, their gradient written into `target` by one backward pass with `hooks`."""
        X, y, w = gather(rows)
        loss = self.model.loss_and_grad_into(X, y, target, hooks=hooks, progress_chunks=4, validate=False, w=w,
                                             rows=rows)
        return loss, self.model.count_correct(y, w=w) if rows.shape[0] else 0.0

    def finish(self) -> None:
        self.reducer.finish()

    @property
    def stats(self) -> dict:
        return {**self.reducer.stats, **self.clip.stats()}

    def reset_stats(self) -> None:
        super().reset_stats()
        self.reducer.reset_stats()

    def attach_trace(self, tracer) -> None:
        self.reducer.trace = tracer


class AddAccumulated:
    """Backward hooks for the last micro-batch: grad += acc layer by layer, then pass the news on."""

    def __init__(self, acc: np.ndarray, grad: np.ndarray, layer_slices: list[slice], inner):
        self.acc, self.grad, self.slices, self.inner = acc, grad, layer_slices, inner

    def layer_ready(self, layer: int) -> None:
        sl = self.slices[layer]
        self.grad[sl] += self.acc[sl]
        self.inner.layer_ready(layer)

    def progress(self) -> None:
        self.inner.progress()
