"""Element-wise layer kernels, fused and parallel; matrix products stay in BLAS.

Layout (all of distbp): batch-major. A layer maps a (n, fan_in) to
z = a·W + b of shape (n, fan_out), with W (fan_in, fan_out) and b (fan_out,).

Forward:   z = a·W (BLAS), then `bias_activation_forward`: z += b, a' = σ(z).
Backward:  g = δ_next·Wᵀ (BLAS), then `activation_backward`: δ = σ'(z) ⊙ g and
           db = Σₙ δ in the same pass; dW = aᵀ·δ (BLAS).
The activation `act` / `act_prime` is passed in as a Numba function (see
`distbp.activations`); each one gets its own compiled specialisation.
"""

import numpy as np
from numba import njit, prange

# columns per parallel task in kernels that also reduce over rows: 64 float32 = 4 cache lines
COLUMN_BLOCK = 64


@njit(parallel=True, cache=True)
def bias_activation_forward(z, a, b, act):
    """z (n, m) += b (m,); a (n, m) = act(z). `a` may be `z` itself."""
    n, m = z.shape
    for i in prange(n):
        for j in range(m):
            zij = z[i, j] + b[j]
            z[i, j] = zij
            a[i, j] = act(zij)


@njit(parallel=True, cache=True)
def activation_backward(delta, g, z, a, db, act_prime):
    """δ (n, m) = act_prime(z, a) ⊙ g, and db (m,) = Σₙ δ.

    g = δ_next·Wᵀ (n, m); z, a the layer's pre-activation and activation (n, m).
    `delta` may be `z` (z is read before it is overwritten). Tasks own blocks of
    columns, so the sum over rows has one writer per column (no race) and a fixed
    order (the same result for any thread count).
    """
    n, m = g.shape
    n_blocks = (m + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for blk in prange(n_blocks):
        j0 = blk * COLUMN_BLOCK
        j1 = min(m, j0 + COLUMN_BLOCK)
        for j in range(j0, j1):
            db[j] = 0
        for i in range(n):
            for j in range(j0, j1):
                d = g[i, j] * act_prime(z[i, j], a[i, j])
                delta[i, j] = d
                db[j] += d


@njit(parallel=True, cache=True)
def column_sum(delta, db):
    """db (m,) = Σₙ delta (n, m), by column blocks in row order."""
    n, m = delta.shape
    n_blocks = (m + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for blk in prange(n_blocks):
        j0 = blk * COLUMN_BLOCK
        j1 = min(m, j0 + COLUMN_BLOCK)
        for j in range(j0, j1):
            db[j] = 0
        for i in range(n):
            for j in range(j0, j1):
                db[j] += delta[i, j]


@njit(cache=True)
def ordered_sum(x):
    """Σ x in index order (deterministic, whatever the thread count); float64 accumulator."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s


@njit(parallel=True, cache=True)
def all_finite(x):
    """True when the 1-D array x holds no NaN or Inf."""
    bad = 0
    for i in prange(x.shape[0]):
        if not np.isfinite(x[i]):
            bad += 1
    return bad == 0
