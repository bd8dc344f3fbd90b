"""The output layer: its activation y = σ(z) and the loss on y, each summed over examples: `L = Σₙ lⁿ`.

The seed's chain rule at the output: δ = ∂lⁿ/∂z = σ'(z) ⊙ ∂lⁿ/∂y. An output layer (`get_loss(loss,
output_activation)`) is a fused kernel `loss_delta(z, y, out, delta, row_loss)` that, for
the output pre-activations `z` (n, k), writes the output activations `out`
(n, k), the per-example loss `row_loss` (n,) and `delta = ∂lⁿ/∂z` (n, k), plus
`output(z, out)` for prediction and `check_targets(y, n, k)` for validation.

    loss                   output activations    targets y                   δ
    cross_entropy          softmax               class labels (n,) int       p − onehot(y)         (fused)
    binary_cross_entropy   sigmoid               0/1 (or [0, 1]) (n, k)      σ(z) − y              (fused)
    mse                    linear                float (n, k)                ŷ − y                 (fused)
    mse                    sigmoid, tanh, relu   float (n, k)                σ'(z) ⊙ (ŷ − y)
    mse                    softmax               float (n, k)                J_softmaxᵀ·(ŷ − y) = p ⊙ (d − p·d)

Binary cross-entropy is lⁿ = Σⱼ softplus(zⱼ) − yⱼzⱼ, softplus(z) = max(z, 0) + log1p(e^−|z|): the same as
−y·log σ(z) − (1 − y)·log(1 − σ(z)) without ever taking the log of a 0, so no |z| overflows it.
`delta` may be the same array as `z` (each element is read before it is written).
Rows are independent, so the kernels run `prange` over rows; the total loss is
summed afterwards in row order, so it does not depend on the thread count.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit, prange

from distbp.nn.activations import derivative, exp, grain_of, kernel_key, value
from distbp.nn.grain import HEAVY_GRAIN, LIGHT_GRAIN, MEDIUM_GRAIN, parallel_kernel
from distbp.nn.outputs import output_activation_for


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


@parallel_kernel(HEAVY_GRAIN, nogil=True)
def softmax(z, out):
    """out (n, k) = softmax of each row of z (n, k)."""
    for i in prange(z.shape[0]):
        softmax_row(z, i, out)


@parallel_kernel(HEAVY_GRAIN, nogil=True)
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


@parallel_kernel(LIGHT_GRAIN, nogil=True)
def identity(z, out):
    n, k = z.shape
    for i in prange(n):
        for j in range(k):
            out[i, j] = z[i, j]


@parallel_kernel(MEDIUM_GRAIN, nogil=True)
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


@parallel_kernel(HEAVY_GRAIN, nogil=True)
def binary_cross_entropy_delta(z, y, out, delta, row_loss):
    """σ outputs with binary cross-entropy: lⁿ = Σⱼ softplus(zⱼ) − yⱼ·zⱼ, δ = σ(z) − y.

    z (n, k) logits; y (n, k) targets in [0, 1] (0/1 labels, each output its own yes/no); out (n, k) = σ(z);
    delta (n, k); row_loss (n,). softplus(z) = max(z, 0) + log1p(exp(−|z|)): finite for any finite z.
    """
    n, k = z.shape
    for i in prange(n):
        s = type(z[i, 0])(0)
        for j in range(k):
            zij, yij = z[i, j], y[i, j]
            e = exp(-abs(zij))  # one exp gives both σ(z) and softplus(z), and never overflows
            one = type(zij)(1)
            p = one / (one + e) if zij >= 0 else e / (one + e)
            s += max(zij, type(zij)(0)) - yij * zij + np.log1p(e)
            out[i, j] = p
            delta[i, j] = p - yij
        row_loss[i] = s


@parallel_kernel(HEAVY_GRAIN, nogil=True)
def softmax_mse_delta(z, y, out, delta, row_loss):
    """Softmax outputs with squared error: lⁿ = ½Σ(p − y)², δ = J_softmaxᵀ·(p − y) = p ⊙ (d − Σⱼ pⱼdⱼ).

    z (n, k); y (n, k) float targets; out (n, k) = softmax(z); delta (n, k); row_loss (n,).
    """
    n, k = z.shape
    for i in prange(n):
        softmax_row(z, i, out)
        s = type(z[i, 0])(0)
        pd = type(z[i, 0])(0)
        for j in range(k):
            d = out[i, j] - y[i, j]
            s += d * d
            pd += out[i, j] * d
        for j in range(k):
            delta[i, j] = out[i, j] * ((out[i, j] - y[i, j]) - pd)
        row_loss[i] = s / type(s)(2)


def _make_mse_delta(key: str):
    @parallel_kernel(grain_of(key, MEDIUM_GRAIN, HEAVY_GRAIN), nogil=True)
    def activation_mse_delta(z, y, out, delta, row_loss):
        """An element-wise output activation with squared error: lⁿ = ½Σ(σ(z) − y)², δ = σ'(z) ⊙ (σ(z) − y).

        z (n, k); y (n, k) float targets; out (n, k) = σ(z); delta (n, k); row_loss (n,).
        """
        n, k = z.shape
        for i in prange(n):
            s = type(z[i, 0])(0)
            for j in range(k):
                a = value(key, z[i, j])
                d = a - y[i, j]
                out[i, j] = a
                delta[i, j] = derivative(key, a) * d
                s += d * d
            row_loss[i] = s / type(s)(2)
    return activation_mse_delta


def _make_output(key: str):
    @parallel_kernel(grain_of(key, LIGHT_GRAIN, HEAVY_GRAIN), nogil=True)
    def activation_output(z, out):
        """out (n, k) = σ(z) element-wise."""
        n, k = z.shape
        for i in prange(n):
            for j in range(k):
                out[i, j] = value(key, z[i, j])
    return activation_output


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


def check_binary_targets(y: np.ndarray, n: int, k: int) -> None:
    """Targets for binary_cross_entropy: float (n, k) in [0, 1] (0/1 labels; one column per output)."""
    if not isinstance(y, np.ndarray) or y.ndim != 2 or y.shape != (n, k):
        raise ValueError(f"binary_cross_entropy targets must be 0/1 labels of shape ({n}, {k}), one column per "
                         f"output, got {_describe(y)}")
    if not np.issubdtype(y.dtype, np.floating):
        raise ValueError(f"binary_cross_entropy targets must be floating point 0/1 values, got dtype {y.dtype}")
    if y.size and not ((y >= 0) & (y <= 1)).all():
        bad = y[~((y >= 0) & (y <= 1))][0]
        raise ValueError(f"binary_cross_entropy targets must lie in [0, 1] (0/1 labels), got {bad}")


def _describe(a) -> str:
    return f"shape {a.shape} dtype {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__


@dataclass(frozen=True)
class Loss:
    """An output layer: the loss `name` on the output activation `output_activation`."""

    name: str
    output_activation: str
    loss_delta: Callable  # fused output activation, per-row loss and δ
    output: Callable  # output activation only (prediction)
    check_targets: Callable  # (y, n, k) → raises ValueError
    labels: bool  # True: targets are integer class labels (n,); False: float (n, k)

    @property
    def multilabel(self) -> bool:
        """Each output a yes/no of its own (σ with binary cross-entropy): accuracy compares p > ½ with y."""
        return self.name == "binary_cross_entropy"


_BUILT: dict = {}


def get_loss(name: str, output_activation: str | None = None) -> Loss:
    """The output layer of loss `name` on `output_activation` (None: the loss's default, see DEFAULT_OUTPUT)."""
    act = output_activation_for(name, output_activation)
    if (name, act) not in _BUILT:
        _BUILT[name, act] = _build(name, act)
    return _BUILT[name, act]


def _build(name: str, act: str) -> Loss:
    if name == "cross_entropy":
        return Loss(name, act, cross_entropy_delta, softmax, check_class_labels, True)
    if name == "binary_cross_entropy":
        return Loss(name, act, binary_cross_entropy_delta, _make_output(kernel_key("sigmoid")), check_binary_targets,
                    False)
    if act == "linear":  # today's kernels, so that today's runs keep their bits
        return Loss(name, act, mse_delta, identity, check_regression_targets, False)
    if act == "softmax":
        return Loss(name, act, softmax_mse_delta, softmax, check_regression_targets, False)
    key = kernel_key(act)
    return Loss(name, act, _make_mse_delta(key), _make_output(key), check_regression_targets, False)
