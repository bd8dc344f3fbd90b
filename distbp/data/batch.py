"""The gather buffers of a rank: where a step's rows (and an evaluation's) are copied before the model reads them."""

from __future__ import annotations

import numpy as np

from distbp.data.datasets import Split


class BatchBuffers:
    """This rank's gather buffers: X (rows, features) in the model's dtype, y (rows,) int64 labels or
    (rows, outputs) float targets, reused by every step and by evaluation."""

    def __init__(self, rows: int, features: int, outputs: int, dtype, labels: bool):
        self.X = np.empty((rows, features), dtype)
        self.y = np.empty(rows, np.int64) if labels else np.empty((rows, outputs), dtype)

    def gather(self, split: Split, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows `rows` (int64 indices, at most the buffers' rows) of `split`, as views of the buffers."""
        k = rows.shape[0]
        split.gather(rows, self.X[:k], self.y[:k])
        return self.X[:k], self.y[:k]
