"""Where training stands (`Position`): what a checkpoint keeps so that a resumed run continues exactly.

The loop moves it, the early-stopping rule (`distbp.train.stopping`) keeps its best in it, and the
checkpoint code (`distbp.train.runstate`) writes and reads it; none of them imports another for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Position:
    """Where training stands: the next batch to run is `batch` of `epoch`; `step` updates done so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped: int = 0  # updates skipped for NaN/Inf (--skip-nonfinite)
    # running sums of the current epoch (so a mid-epoch resume reports the same epoch metrics)
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    weight: float = 0.0  # Σ wₙ of the rows seen, with per-row weights (the epoch metrics' denominator then)
    # early stopping and --save-best (distbp.train.stopping): the best held-out metric so far, the step after which
    # it was measured, and the evaluations since then (defaults: what checkpoints from before them mean)
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def stepped(self, loss: float, correct: float, rows: int, weight: float) -> None:
        """One more update done on a batch of `rows` rows (Σ loss, correct, Σ wₙ over all ranks): into the epoch's
        running sums, and on to the next batch and step."""
        self.loss_sum += loss
        self.correct += correct
        self.seen += rows
        self.weight += weight
        self.batch += 1
        self.step += 1
