"""Early stopping and the best model: is this evaluation the best so far, and is it time to give up?

Every evaluation on the held-out rows (at each epoch's end, and every --eval-every global steps) is
one observation of cfg.early_stop_metric. The rule, a pure function of the observations:

    better(v, best)  =  v < best for test_loss and test_rmse,  v > best for test_accuracy and test_r2
                        (a first finite v always is; a missing one, as test_accuracy of a regression, never)
    since_best       =  evaluations in a row without a better value (0 right after the best)
    stop             =  patience > 0 and since_best ≥ patience

The state (best, best_step, since_best) lives in the run's `Position`, so that checkpoints carry it
and a resumed run continues the count exactly. Every rank evaluates the same allreduced metric, so every
rank reaches the same verdict at the same step without a word exchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distbp.config import Config
from distbp.train.position import Position

LOWER_IS_BETTER = {"test_loss": True, "test_accuracy": False, "test_subset_accuracy": False, "test_rmse": True,
                   "test_r2": False}


@dataclass(frozen=True)
class EarlyStopping:
    """The rule for one run: which metric, how patient, whether the best is followed at all."""

    metric: str = "test_loss"
    patience: int = 0  # evaluations in a row without improvement before stopping (0: never stop)
    keeps_best: bool = False  # --save-best: follow the best even without a patience

    @classmethod
    def of(cls, cfg: Config) -> EarlyStopping:
        return cls(cfg.early_stop_metric, cfg.early_stop_patience, bool(cfg.save_best))

    @property
    def active(self) -> bool:
        """Whether evaluations are judged at all (and their records carry the best so far)."""
        return self.patience > 0 or self.keeps_best

    def better(self, value: float | None, best: float | None) -> bool:
        """Whether `value` improves on `best` (None: nothing yet); NaN or a missing value never does."""
        if value is None or not math.isfinite(value):
            return False
        return best is None or (value < best if LOWER_IS_BETTER[self.metric] else value > best)

    def observe(self, pos: Position, record: dict) -> tuple[bool, bool]:
        """Judge the evaluation in `record` (its `metric` key), made after pos.step updates.

        Updates pos.best, pos.best_step and pos.since_best, and adds to the record `best_<metric>` (the
        best so far, this one included) and, with a patience, `stopped_early`. Returns (improved, stop).
        """
        if not self.active:
            return False, False
        value = record.get(self.metric)  # absent where the run's kind has no such score
        improved = self.better(value, pos.best)
        if improved:
            pos.best, pos.best_step, pos.since_best = value, pos.step, 0
        else:
            pos.since_best += 1
        stop = self.exhausted(pos)
        record["best_" + self.metric] = pos.best
        if self.patience:
            record["stopped_early"] = stop
        return improved, stop

    def exhausted(self, pos: Position) -> bool:
        """Whether the run has run out of patience (also true of a resumed run that had stopped early)."""
        return self.patience > 0 and pos.since_best >= self.patience

    def stop_line(self, pos: Position) -> str:
        """The root's line when the run stops early at pos (epoch pos.epoch + 1, after pos.step updates)."""
        return (f"distbp: early stop at epoch {pos.epoch + 1}, step {pos.step}: no better {self.metric} in "
                f"{pos.since_best} evaluations; best {self.metric} {_value(pos.best)} at step {pos.best_step}")

    def stopped_line(self, pos: Position) -> str:
        """The root's line when a resumed run had already stopped early."""
        return (f"distbp: the run stopped early at step {pos.step} (best {self.metric} {_value(pos.best)} at step "
                f"{pos.best_step}); nothing to train (raise --early-stop-patience to train more)")


def _value(v: float | None) -> str:
    return "none" if v is None else f"{v:.6g}"
