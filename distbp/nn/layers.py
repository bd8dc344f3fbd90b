"""One dense layer's forward and backward pass, as named functions (llm.c's layer pairs).

Outputs come first in every argument list, gradients are prefixed d, and the shapes are written once:

    a_in (n, fan_in)   W (fan_in, fan_out)   b, db (fan_out,)   z, a_out, delta (n, fan_out)
    delta_in, db_in: δ and db of the layer below, (n, fan_in) and (fan_in,)

Forward:   z = a_in·W (BLAS), a_out = σ(z + b) (kernels.bias_activation_forward).
Backward:  dW = a_inᵀ·δ (weight_gradient), db = Σₙ δ (bias_gradient), and the layer below's
           δ_in = σ'(a_in) ⊙ (δ·Wᵀ) with db_in = Σₙ δ_in fused (dense_backward, or narrow_dense_backward
           when this layer is at most kernels.NARROW_WIDTH wide).
partial is the column sums' scratch, at least (⌈n/kernels.ROW_CHUNK⌉, width) (see distbp.nn.model.Workspace).
`hooks.progress()` is called between row chunks of δ·Wᵀ, so communication can overlap the backward pass.
Every kernel and product goes through distbp.nn.grain: below its grain size it runs on the calling thread alone.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from distbp.nn import kernels
from distbp.nn.grain import matmul, sized


class BackwardHooks(Protocol):
    """What the backward pass tells a gradient reducer (see `distbp.sync.reducer.GradientReducer`)."""

    def layer_ready(self, layer: int) -> None: ...  # layer's dW, db are final
    def progress(self) -> None: ...  # called between compute chunks


def dense_forward(z: np.ndarray, a_out: np.ndarray, a_in: np.ndarray, W: np.ndarray, b: np.ndarray,
                  forward_kernel: Callable) -> None:
    """z = a_in·W, then a_out = σ(z + b) by `forward_kernel` (kernels.bias_activation_forward_for(σ)).
    a_out may be z itself: the output layer adds its bias in place and leaves σ to the loss."""
    matmul(a_in, W, z)
    sized(forward_kernel, z.size, z.dtype)(z, a_out, b)


def weight_gradient(dW: np.ndarray, a: np.ndarray, delta: np.ndarray) -> None:
    """dW (fan_in, fan_out) = aᵀ·δ for a (n, fan_in), δ (n, fan_out)."""
    matmul(a.T, delta, dW)


def bias_gradient(db: np.ndarray, delta: np.ndarray, partial: np.ndarray) -> None:
    """db (fan_out,) = Σₙ δ, in fixed row chunks (the same for any thread count)."""
    sized(kernels.column_sum, delta.size)(delta, db, partial)


def dense_backward(delta_in: np.ndarray, db_in: np.ndarray, delta: np.ndarray, W: np.ndarray, a_in: np.ndarray,
                   backward_kernel: Callable, g: np.ndarray, partial: np.ndarray,
                   hooks: BackwardHooks | None = None, progress_chunks: int = 1, dropout: tuple | None = None) -> None:
    """δ_in = σ'(a_in) ⊙ (δ·Wᵀ) and db_in = Σₙ δ_in: δ·Wᵀ by BLAS into the scratch g (n, fan_in), in
    `progress_chunks` row chunks with hooks.progress() after each, then σ' and the column sums in one pass
    (backward_kernel: kernels.activation_backward_for(σ of the layer below)). delta_in may be the layer
    below's z buffer (δ overwrites z). dropout: (rows, offset, key, threshold, scale) of the layer below's mask, which
    then multiplies δ·Wᵀ before σ' (the layer above read a_in·mask/(1−p); a_in itself is unmasked)."""
    _matmul_chunked(delta, W.T, g, hooks, progress_chunks)
    if dropout is not None:
        sized(kernels.dropout_backward, g.size)(g, *dropout)
    sized(backward_kernel, g.size)(delta_in, g, a_in, db_in, partial)


def narrow_dense_backward(delta_in: np.ndarray, db_in: np.ndarray, delta: np.ndarray, W: np.ndarray,
                          a_in: np.ndarray, narrow_kernel: Callable, w_t: np.ndarray, partial: np.ndarray,
                          hooks: BackwardHooks | None = None) -> None:
    """dense_backward for a layer at most kernels.NARROW_WIDTH wide: δ·Wᵀ, σ' and db_in in one pass without
    BLAS (narrow_kernel: kernels.narrow_backward_for(σ of the layer below)), reading Wᵀ from the contiguous
    copy w_t (fan_out, fan_in) made here; hooks.progress() once, after it."""
    np.copyto(w_t, W.T)
    sized(narrow_kernel, delta_in.size)(delta_in, delta, w_t, a_in, db_in, partial)
    if hooks is not None:
        hooks.progress()


def _matmul_chunked(a, b, out, hooks: BackwardHooks | None, chunks: int) -> None:
    """out = a·b, split into row chunks with hooks.progress() between them."""
    if hooks is None or chunks <= 1:
        matmul(a, b, out)
        if hooks is not None:
            hooks.progress()
        return
    n = a.shape[0]
    step = -(-n // chunks)
    for r0 in range(0, n, step):
        matmul(a[r0:r0 + step], b, out[r0:r0 + step])
        hooks.progress()
