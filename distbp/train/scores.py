"""Scores on held-out rows: one accumulator for training's evaluation and for `distbp evaluate`.

Each rank adds its chunks (the last forward pass's outputs, the targets the loss took, the chunk's loss
sum and its rows' weights); the sums then travel in ONE `comm.sum_scalars` and every rank finishes the same
numbers. What is scored depends on the kind of targets (`score_kind`):

    kind         accuracy                                   also
    classes      top-1: argmax of the outputs is the label  -
    multilabel   per label (Hamming): p > ½ matches y > ½   subset_accuracy: rows with every label right
    values       None                                       rmse, r2 (regression with mse)

with, over the rows n (each counted wₙ with per-row weights, as scikit-learn's sample_weight does) and the
targets j = 1…k, in the targets' own units (a scaled residual r = (ŷ − y)·factor_j is divided by factor_j):

    loss  = Σₙ wₙ lⁿ / Σₙ wₙ
    rmse  = sqrt(Σⱼ SSEⱼ / (Σₙ wₙ · k)),            SSEⱼ = Σₙ wₙ (ŷₙⱼ − yₙⱼ)²
    r2    = meanⱼ (1 − SSEⱼ / SSTⱼ),                 SSTⱼ = Σₙ wₙ (yₙⱼ − ȳⱼ)²   (scikit-learn's r2_score, uniform
                                                                                   average; SSTⱼ = 0 scores 1 if
                                                                                   SSEⱼ = 0, else 0)

SSTⱼ comes from the float64 sums Σ wₙ, Σ wₙ yₙⱼ and Σ wₙ yₙⱼ² (SST = Σwy² − (Σwy)²/Σw): one pass, and sums
add over chunks and ranks, where the two-pass Σ(y − ȳ)² would need ȳ before the first chunk. Its rounding
error is about 1e-16·(ȳⱼ/σⱼ)² relative: nothing for standardized targets (--scale-targets, whose ȳ is about 0),
1e-8 for a mean 1e4 standard deviations from 0. R² is the same in scaled and original units, so it is
computed on the targets as the loss took them.

The sum vector is [Σ loss, correct, Σ wₙ] (training's evaluation had exactly these sums, in this order, so
classifiers keep their bits), then [subset] for multilabel, then [SSE, Σwy, Σwy²] × k for values.
"""

from __future__ import annotations

import math
from typing import Protocol, Self

import numpy as np

from distbp.nn import kernels

KINDS = ("classes", "multilabel", "values")
SST_ROUNDING = 64 * np.finfo(np.float64).eps  # Σwy² − (Σwy)²/Σw below this share of Σwy² is rounding, not spread


class _Loss(Protocol):
    multilabel: bool


def score_kind(loss: _Loss, data) -> str:
    """How rows are scored: "classes", "multilabel" or "values" (see the module docstring). loss: the model's
    (`model.loss`); data: a Dataset (its kind: what its y is for the loss)."""
    return "multilabel" if loss.multilabel else data.kind


# the held-out metrics each kind has (what early stopping may watch)
METRICS = {"classes": ("test_loss", "test_accuracy"),
           "multilabel": ("test_loss", "test_accuracy", "test_subset_accuracy"),
           "values": ("test_loss", "test_rmse", "test_r2")}


class Evaluation(tuple):
    """The held-out scores of one evaluation: a pair (loss, accuracy) as evaluations always gave (accuracy None
    for regression), with `scores` the whole dict: loss, accuracy, and subset_accuracy (multilabel) or rmse and
    r2 (values)."""

    scores: dict

    def __new__(cls, scores: dict) -> Self:
        self = super().__new__(cls, (scores["loss"], scores["accuracy"]))
        self.scores = scores
        return self


def scores_of(test) -> dict:
    """The scores dict of an evaluation: an `Evaluation`'s, or {"loss", "accuracy"} of a plain pair."""
    return test.scores if isinstance(test, Evaluation) else {"loss": test[0], "accuracy": test[1]}


class Scores:
    """The sums of one evaluation over this rank's chunks (`add`), then over the ranks (`reduce`).

    kind: "classes", "multilabel" or "values"; outputs: k, the model's outputs; target_factor: (k,) the
    targets' scaling factors (`model.target_factor`) when the targets and outputs are scaled, else None."""

    def __init__(self, kind: str, outputs: int, target_factor: np.ndarray | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.k = kind, int(outputs)
        self.factor = None if target_factor is None else np.asarray(target_factor, np.float64).reshape(self.k)
        self.loss = self.correct = self.weight = self.subset = 0.0
        self.sse, self.sy, self.syy = (np.zeros(self.k) for _ in range(3))

    @property
    def needs_outputs(self) -> bool:
        """Whether `add` needs the outputs: the subset accuracy and the regression sums do; a classifier's
        correct count can come from `model.count_correct`."""
        return self.kind != "classes"

    def add(self, y: np.ndarray, loss_sum: float, w: np.ndarray | None = None, *, out: np.ndarray | None = None,
            correct: float | None = None) -> None:
        """One chunk of n rows.

        y: what the loss took, (n,) int labels or (n, k) one-hot rows, 0/1 labels or targets (scaled, if the
        model scales them); loss_sum: the chunk's Σ wₙ lⁿ (`model.loss_into`); w (n,): the rows' weights
        (float64 for the exact Σ wₙ; None: every row counts 1); out (n, k): the outputs of the chunk's forward
        pass (needed unless `correct` is given for classes); correct: the chunk's correct count, weighted
        (`model.count_correct`), instead of counting it from out.
        """
        n = y.shape[0]
        self.loss += loss_sum
        self.weight += float(n) if w is None else math.fsum(w)
        if self.kind == "classes":
            self.correct += correct if correct is not None else _top1(out, y, w)
        elif self.kind == "multilabel":
            hamming, subset = kernels.multilabel_correct(_need(out), y, w)
            self.correct += float(hamming)
            self.subset += float(subset)
        else:
            self._add_values(_need(out), y, w)

    def _add_values(self, out: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> None:
        t = np.asarray(y, np.float64)
        r = np.asarray(out, np.float64) - t
        if w is None:
            self.sse += np.einsum("ij,ij->j", r, r)
            self.sy += t.sum(axis=0)
            self.syy += np.einsum("ij,ij->j", t, t)
        else:
            w = np.asarray(w, np.float64)
            self.sse += np.einsum("i,ij,ij->j", w, r, r)
            self.sy += w @ t
            self.syy += np.einsum("i,ij,ij->j", w, t, t)

    def vector(self) -> list[float]:
        """This rank's sums, in the order of the module docstring."""
        head = [self.loss, self.correct, self.weight]
        if self.kind == "multilabel":
            return head + [self.subset]
        if self.kind == "values":
            return head + [*self.sse, *self.sy, *self.syy]
        return head

    def reduce(self, comm) -> Evaluation:
        """[dist] The sums over ranks (one allreduce), finished: the same on every rank."""
        return self.finish(comm.sum_scalars(self.vector()))

    def finish(self, totals) -> Evaluation:
        """The scores from summed vectors (`vector` summed over ranks). Means over no rows (or rows whose
        weights are all 0) are NaN."""
        totals = np.asarray(totals, np.float64)
        n = totals[2] if totals[2] > 0 else float("nan")
        scores = {"loss": float(totals[0] / n), "accuracy": None}
        if self.kind != "values":
            scores["accuracy"] = float(totals[1] / n)
        if self.kind == "multilabel":
            scores["subset_accuracy"] = float(totals[3] / n)
        if self.kind == "values":
            k = self.k
            sse, sy, syy = totals[3:3 + k], totals[3 + k:3 + 2 * k], totals[3 + 2 * k:3 + 3 * k]
            scores["rmse"] = rmse(sse, n, self.factor)
            scores["r2"] = r2(sse, sy, syy, n)
        return Evaluation(scores)


def rmse(sse: np.ndarray, n: float, factor: np.ndarray | None = None) -> float:
    """sqrt(Σⱼ SSEⱼ / (n·k)) in the targets' own units: SSEⱼ (k,) of scaled residuals is divided by factorⱼ²."""
    if factor is not None:
        sse = sse / (factor * factor)
    return float(math.sqrt(sse.sum() / (n * sse.shape[0])))


def r2(sse: np.ndarray, sy: np.ndarray, syy: np.ndarray, n: float) -> float:
    """meanⱼ (1 − SSEⱼ/SSTⱼ) with SSTⱼ = Σwy² − (Σwy)²/Σw; a target with SSTⱼ = 0 scores 1 when SSEⱼ = 0, else 0
    (scikit-learn's force_finite). An SSTⱼ within rounding of Σwy² (a constant target) counts as 0."""
    if not n > 0:
        return float("nan")
    sst = syy - sy * sy / n
    sst = np.where(sst > SST_ROUNDING * syy, sst, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_target = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return float(per_target.mean())


def _need(out: np.ndarray | None) -> np.ndarray:
    if out is None:
        raise ValueError("these scores need the outputs of the chunk's forward pass (out=)")
    return out


def _top1(out: np.ndarray | None, y: np.ndarray, w: np.ndarray | None) -> float:
    """The rows (Σ wₙ) whose largest output is the label: labels (n,) or one-hot rows (n, k), as
    `MLP.count_correct` counts them."""
    out = _need(out)
    if w is None:
        return float(kernels.count_correct(out, y) if y.ndim == 1 else kernels.count_correct_onehot(out, y))
    w = np.asarray(w, out.dtype)
    return float(kernels.weighted_correct(out, y, w) if y.ndim == 1 else kernels.weighted_correct_onehot(out, y, w))
