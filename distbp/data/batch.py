"""The gather buffers of a rank: where a step's rows (and an evaluation's) are copied before the model reads them."""

from __future__ import annotations

import numpy as np

from distbp.data.datasets import Split


class BatchBuffers:
    """This rank's gather buffers: X (rows, features) in the model's dtype, y (rows,) int64 labels or
    (rows, outputs) float targets, and w (rows,) the rows' weights in the model's dtype (only for data with
    weights), reused by every step and by evaluation."""

    def __init__(self, rows: int, features: int, outputs: int, dtype, labels: bool, weighted: bool = False):
        self.X = np.empty((rows, features), dtype)
        self.y = np.empty(rows, np.int64) if labels else np.empty((rows, outputs), dtype)
        self.w = np.empty(rows, dtype) if weighted else None

    def gather(self, split: Split, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(X, y, w) of the rows `rows` (int64 indices, at most the buffers' rows) of `split`, as views of the
        buffers; w is None when the split has no weights (every row counts once)."""
        k = rows.shape[0]
        w = None if split.w is None else self._weights()[:k]
        X, y = self.X[:k], self.y[:k]
        split.gather(rows, X, y, w)
        return X, y, w

    def _weights(self) -> np.ndarray:
        if self.w is None:  # a split with weights in buffers made without: one allocation, then reused
            self.w = np.empty(self.X.shape[0], self.X.dtype)
        return self.w
