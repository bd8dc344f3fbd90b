"""Optimizers on the flat parameter buffer: θ ← θ − η·∇L and two refinements.

Every optimizer updates `params` (flat, n_params) in place from `grad` (flat,
the summed gradient ∇L = Σₙ ∂lⁿ/∂θ after the allreduce) in one parallel loop.
`scale` multiplies the gradient first: 1 for the seed's summed loss, 1/B to use
the mean over a global batch of B rows (the trainer decides, in one place).
Scalars are cast to the buffer's dtype so float32 updates stay float32.
State (`state_arrays`, `step_count`) goes into checkpoints.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def gd_update(params, grad, lr_scaled):
    """θ ← θ − (η·scale)·∇L."""
    for i in prange(params.shape[0]):
        params[i] -= lr_scaled * grad[i]


@njit(parallel=True, cache=True)
def momentum_update(params, grad, velocity, lr, scale, mu):
    """v ← μ·v + scale·∇L; θ ← θ − η·v (heavy-ball momentum)."""
    for i in prange(params.shape[0]):
        v = mu * velocity[i] + scale * grad[i]
        velocity[i] = v
        params[i] -= lr * v


@njit(parallel=True, cache=True)
def adam_update(params, grad, m, v, lr_t, scale, beta1, beta2, eps_t):
    """Adam (Kingma & Ba) with the bias corrections folded into lr_t and eps_t."""
    one = type(beta1)(1)
    for i in prange(params.shape[0]):
        g = scale * grad[i]
        mi = beta1 * m[i] + (one - beta1) * g
        vi = beta2 * v[i] + (one - beta2) * g * g
        m[i] = mi
        v[i] = vi
        params[i] -= lr_t * mi / (np.sqrt(vi) + eps_t)


class GD:
    """Plain gradient descent, exactly the seed's θ ← θ − η∇L."""

    name = "gd"
    state_copies = 0  # state arrays of n_params elements each (for memory estimates)

    def __init__(self, n_params: int, dtype, lr: float):
        _check_lr(lr)
        self.dtype = np.dtype(dtype)
        self.lr = lr
        self.step_count = 0

    def step(self, params: np.ndarray, grad: np.ndarray, scale: float = 1.0) -> None:
        gd_update(params, grad, self.dtype.type(self.lr * scale))
        self.step_count += 1

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's state buffers (views, not copies), by name."""
        return {}

    def load_state(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        for key, target in self.state_arrays().items():
            if key not in arrays:
                raise ValueError(f"optimizer state has no {key!r} array")
            if arrays[key].shape != target.shape:
                raise ValueError(f"optimizer state {key!r} has shape {arrays[key].shape}, expected {target.shape}")
            target[...] = arrays[key]
        self.step_count = int(step_count)


class Momentum(GD):
    """Gradient descent with heavy-ball momentum μ."""

    name = "momentum"
    state_copies = 1

    def __init__(self, n_params: int, dtype, lr: float, momentum: float = 0.9):
        super().__init__(n_params, dtype, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mu = momentum
        self.velocity = np.zeros(n_params, self.dtype)

    def step(self, params, grad, scale=1.0):
        t = self.dtype.type
        momentum_update(params, grad, self.velocity, t(self.lr), t(scale), t(self.mu))
        self.step_count += 1

    def state_arrays(self):
        return {"velocity": self.velocity}


class Adam(GD):
    """Adam with β₁, β₂, ε; bias-corrected."""

    name = "adam"
    state_copies = 2

    def __init__(self, n_params: int, dtype, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__(n_params, dtype, lr)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or eps <= 0:
            raise ValueError(f"adam needs 0 <= beta1, beta2 < 1 and eps > 0, got {beta1}, {beta2}, {eps}")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = np.zeros(n_params, self.dtype)
        self.v = np.zeros(n_params, self.dtype)

    def step(self, params, grad, scale=1.0):
        self.step_count += 1
        k = self.step_count
        c1 = 1 - self.beta1 ** k
        c2 = 1 - self.beta2 ** k
        # θ -= η·m̂/(√v̂ + ε) with m̂ = m/c1, v̂ = v/c2, rewritten without dividing m and v
        lr_t = self.lr * np.sqrt(c2) / c1
        eps_t = self.eps * np.sqrt(c2)
        t = self.dtype.type
        adam_update(params, grad, self.m, self.v, t(lr_t), t(scale), t(self.beta1), t(self.beta2), t(eps_t))

    def state_arrays(self):
        return {"m": self.m, "v": self.v}


OPTIMIZERS = {"gd": GD, "momentum": Momentum, "adam": Adam}


def make_optimizer(name: str, n_params: int, dtype, lr: float, **options) -> GD:
    """An optimizer by name (gd, momentum, adam) for a flat buffer of n_params."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}") from None
    return cls(n_params, dtype, lr, **options)


def _check_lr(lr: float) -> None:
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
