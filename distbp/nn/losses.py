"""Losses at the output layer, each summed over examples: `L = Σₙ lⁿ`.

A loss is a fused kernel `loss_delta(z, y, out, delta, row_loss)` that, for
the output pre-activations `z` (n, k), writes the output activations `out`
(n, k), the per-example loss `row_loss` (n,) and `delta = ∂lⁿ/∂z` (n, k), plus
`output(z, out)` for prediction and `check_targets(y, n, k)` for validation.
`delta` may be the same array as `z` (each element is read before it is written).
Rows are independent, so the kernels run `prange` over rows; the total loss is
summed afterwards in row order, so it does not depend on the thread count.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def softmax_row(z, i, out):
    """out[i] = softmax(z[i]) with the row maximum subtracted (no overflow); returns (max, Σ exp(z − max))."""
    k = z.shape[1]
    m = z[i, 0]
    for j in range(1, k):
        m = max(m, z[i, j])
    s = type(m)(0)
    for j in range(k):
        e = np.exp(z[i, j] - m)
        out[i, j] = e
        s += e
    for j in range(k):
        out[i, j] /= s
    return m, s


@njit(parallel=True, cache=True, nogil=True)
def softmax(z, out):
    """out (n, k) = softmax of each row of z (n, k)."""
    for i in prange(z.shape[0]):
        softmax_row(z, i, out)


@njit(parallel=True, cache=True, nogil=True)
def cross_entropy_delta(z, y, out, delta, row_loss):
    """Softmax cross-entropy: lⁿ = logΣexp(zⁿ) − zⁿ[yⁿ], δ = softmax(zⁿ) − onehot(yⁿ).

    z (n, k) logits; y (n,) int labels; out (n, k) probabilities; delta (n, k); row_loss (n,).
    Log-sum-exp with the row maximum subtracted, so no overflow for large logits.
    """
    n, k = z.shape
    for i in prange(n):
        z_label = z[i, y[i]]  # read before delta (which may be z) is written
        m, s = softmax_row(z, i, out)
        row_loss[i] = np.log(s) + m - z_label
        for j in range(k):
            delta[i, j] = out[i, j]
        delta[i, y[i]] -= type(m)(1)


@njit(parallel=True, cache=True, nogil=True)
def identity(z, out):
    n, k = z.shape
    for i in prange(n):
        for j in range(k):
            out[i, j] = z[i, j]


@njit(parallel=True, cache=True, nogil=True)
def mse_delta(z, y, out, delta, row_loss):
    """Squared error on a linear output: lⁿ = ½Σ(ŷ − y)², δ = ŷ − y.

    z (n, k) outputs ŷ; y (n, k) float targets; out (n, k) = ŷ; delta (n, k); row_loss (n,).
    """
    n, k = z.shape
    for i in prange(n):
        s = type(z[i, 0])(0)
        for j in range(k):
            yhat = z[i, j]
            d = yhat - y[i, j]
            out[i, j] = yhat
            delta[i, j] = d
            s += d * d
        row_loss[i] = s / type(s)(2)


def check_class_labels(y: np.ndarray, n: int, k: int) -> None:
    """Labels for cross-entropy: integer (n,) in [0, k)."""
    if not isinstance(y, np.ndarray) or y.ndim != 1:
        raise ValueError(f"cross_entropy labels must be a 1-D integer array of shape ({n},), got {_describe(y)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"cross_entropy labels must be integers (class indices), got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"labels have {y.shape[0]} rows but X has {n}")
    if n and (y.min() < 0 or y.max() >= k):
        bad = y[(y < 0) | (y >= k)][0]
        raise ValueError(f"label {int(bad)} out of range: the output layer has {k} classes (labels 0..{k - 1})")


def check_regression_targets(y: np.ndarray, n: int, k: int) -> None:
    """Targets for mse: float (n, k), finite."""
    if not isinstance(y, np.ndarray) or y.ndim != 2 or y.shape != (n, k):
        raise ValueError(f"mse targets must be a float array of shape ({n}, {k}), got {_describe(y)}")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"mse targets must be floating point, got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError("mse targets contain NaN or Inf")


def _describe(a) -> str:
    return f"shape {a.shape} dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__


@dataclass(frozen=True)
class Loss:
    name: str
    loss_delta: Callable  # fused output activation, per-row loss and δ
    output: Callable  # output activation only (prediction)
    check_targets: Callable  # (y, n, k) → raises ValueError
    labels: bool  # True: targets are integer class labels (n,); False: float (n, k)


LOSSES = {
    "cross_entropy": Loss("cross_entropy", cross_entropy_delta, softmax, check_class_labels, True),
    "mse": Loss("mse", mse_delta, identity, check_regression_targets, False),
}


def get_loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}") from None
