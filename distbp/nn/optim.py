"""Optimizers on the flat parameter buffer: θ ← θ − η·∇L and its refinements.

Every optimizer updates `params` (flat, n) in place from `grad` (flat, the summed gradient
∇L = Σₙ ∂lⁿ/∂θ after the allreduce) in one parallel loop (two for lars and lamb, whose layer-wise
rates need norms first). `scale` s multiplies the gradient first: 1 for the seed's summed loss, 1/B to
use the mean over a global batch of B rows (the trainer decides, in one place); gradient clipping folds
its factor into s (`distbp.sync.base.NormClip`). With g = s·∇L, λ the weight decay and t the step:

    gd        θ ← θ − η·(g + λθ)
    momentum  v ← μv + (g + λθ);  θ ← θ − η·v
    adam      m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  θ ← θ − η·m̂/(√v̂ + ε) − η·λθ
              (m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ); the decay is decoupled from the moments: AdamW)
    lars      per layer l: g_l = g + λθ_l;  η_l = η·τ·‖θ_l‖/‖g_l‖;  v ← μv + η_l·g_l;  θ ← θ − v
    lamb      Adam's m, v and m̂, v̂ (ε = 1e-6);  per layer l: r_l = m̂/(√v̂ + ε) + λθ_l;
              θ_l ← θ_l − η·(‖θ_l‖/‖r_l‖)·r_l

Weight decay is L2 (λθ added to the gradient) for gd, momentum and lars, decoupled for adam and lamb
(Loshchilov & Hutter); it applies to the weights W only, and to the biases b too with decay_biases.
With λ = 0, gd, momentum and adam run exactly the kernels (and bits) they always did.

The L2 penalty α (`l2`, scikit-learn's alpha) is coupled for gd, momentum and adam: (α/2)·‖W‖² belongs to
the summed loss of the batch, so g = s·(∇L + αθ) on the decayed pieces, through momentum and Adam's moments
(gd and momentum take it as λ = s·α in the kernels above; adam_l2_update adds it to g). lars and lamb refuse it.

Layers: lars (You et al. 2017) and lamb (You et al. 2019) take one trust ratio per layer, over its W and
b together; the ratio is 1 when either norm is 0 (as TensorFlow's LARS and the LAMB reference code do),
so a layer at θ_l = 0 takes the plain step at η instead of none. An optimizer sees the flat range it
updates as `Segments`, pieces (start, stop, layer, is_bias); with a sharded optimizer state the range
is one rank's part and may cut through layers, so the per-layer sums of squares are partial, and
`sum_over_ranks` (one allreduce of an (n_layers, 2) float64 array) completes them before the ratios.
Both take their norms with one kernel, `layer_norms` specialised on the direction u (lars_norms,
lamb_norms): float64 sums in fixed chunks of kernels.SUM_CHUNK elements, each in kernels.SUM_LANES interleaved
partial sums, added in order (kernels.add_rows_into): the same for any thread count and any CPU, so the same on
every rank that holds the same ∇L. (Lanes, not one running sum, so that the loop vectorises: LAMB's step on
203,530 float32 parameters went from 1.23 ms to ~0.2 ms, benchmarks/optimizers.py.)

Scalars are cast to the buffer's dtype so float32 updates stay float32. State (`state_arrays`,
`step_count`) goes into checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numba import prange, types
from numba.extending import overload

from distbp.nn import kernels
from distbp.nn.grain import UPDATE_GRAIN, parallel_kernel, sized
from distbp.nn.kernels import SUM_CHUNK

# ---- the kernels (segs: the (n_pieces, 4) int64 table of Segments.table: start, stop, layer, decayed) ----

@parallel_kernel(UPDATE_GRAIN)
def gd_update(params, grad, lr_scaled):
    """θ ← θ − (η·scale)·∇L."""
    for i in prange(params.shape[0]):
        params[i] -= lr_scaled * grad[i]


@parallel_kernel(UPDATE_GRAIN)
def gd_l2_update(params, grad, lr, scale, segs, lam):
    """θ ← θ − η·(scale·∇L + λ·θ), λ on decayed pieces only."""
    zero = type(lam)(0)
    for k in range(segs.shape[0]):
        lam_k = lam if segs[k, 3] else zero
        for i in prange(segs[k, 0], segs[k, 1]):
            params[i] -= lr * (scale * grad[i] + lam_k * params[i])


@parallel_kernel(UPDATE_GRAIN)
def momentum_update(params, grad, velocity, lr, scale, mu):
    """v ← μ·v + scale·∇L; θ ← θ − η·v (heavy-ball momentum)."""
    for i in prange(params.shape[0]):
        v = mu * velocity[i] + scale * grad[i]
        velocity[i] = v
        params[i] -= lr * v


@parallel_kernel(UPDATE_GRAIN)
def momentum_l2_update(params, grad, velocity, lr, scale, mu, segs, lam):
    """v ← μ·v + (scale·∇L + λ·θ); θ ← θ − η·v, λ on decayed pieces only."""
    zero = type(lam)(0)
    for k in range(segs.shape[0]):
        lam_k = lam if segs[k, 3] else zero
        for i in prange(segs[k, 0], segs[k, 1]):
            v = mu * velocity[i] + (scale * grad[i] + lam_k * params[i])
            velocity[i] = v
            params[i] -= lr * v


@parallel_kernel(UPDATE_GRAIN)
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


@parallel_kernel(UPDATE_GRAIN)
def adamw_update(params, grad, m, v, lr_t, scale, beta1, beta2, eps_t, segs, lr_lam):
    """adam_update, and θ ← θ − (η·λ)·θ on decayed pieces (decay decoupled from the moments: AdamW)."""
    one, zero = type(beta1)(1), type(beta1)(0)
    for k in range(segs.shape[0]):
        decay = lr_lam if segs[k, 3] else zero
        for i in prange(segs[k, 0], segs[k, 1]):
            g = scale * grad[i]
            mi = beta1 * m[i] + (one - beta1) * g
            vi = beta2 * v[i] + (one - beta2) * g * g
            m[i] = mi
            v[i] = vi
            p = params[i]
            params[i] = p - lr_t * mi / (np.sqrt(vi) + eps_t) - decay * p


@parallel_kernel(UPDATE_GRAIN)
def adam_l2_update(params, grad, m, v, lr_t, scale, beta1, beta2, eps_t, segs, lam, lr_lam):
    """adamw_update with g = scale·∇L + lam·θ (the coupled L2 penalty, lam = scale·α) on decayed pieces."""
    one, zero = type(beta1)(1), type(beta1)(0)
    for k in range(segs.shape[0]):
        lam_k = lam if segs[k, 3] else zero
        decay = lr_lam if segs[k, 3] else zero
        for i in prange(segs[k, 0], segs[k, 1]):
            p = params[i]
            g = scale * grad[i] + lam_k * p
            mi = beta1 * m[i] + (one - beta1) * g
            vi = beta2 * v[i] + (one - beta2) * g * g
            m[i] = mi
            v[i] = vi
            params[i] = p - lr_t * mi / (np.sqrt(vi) + eps_t) - decay * p


@parallel_kernel(UPDATE_GRAIN)
def lars_update(params, grad, velocity, rates, scale, mu, segs, lam):
    """g = scale·∇L + λ·θ (as lars_norms); v ← μ·v + η_l·g; θ ← θ − v, with η_l = rates[layer] (n_layers,)."""
    zero = type(lam)(0)
    for k in range(segs.shape[0]):
        lam_k = lam if segs[k, 3] else zero
        rate = rates[segs[k, 2]]
        start, stop = segs[k, 0], segs[k, 1]
        for c in prange((stop - start + SUM_CHUNK - 1) // SUM_CHUNK):  # contiguous slices: see lamb_update
            a = start + c * SUM_CHUNK
            b = min(stop, a + SUM_CHUNK)
            P, G, U = params[a:b], grad[a:b], velocity[a:b]
            for j in range(b - a):
                p = P[j]
                v = mu * U[j] + rate * (scale * G[j] + lam_k * p)
                U[j] = v
                P[j] = p - v


@parallel_kernel(UPDATE_GRAIN)
def lamb_update(params, m, v, rates, corr, eps_t, segs, lam):
    """θ ← θ − η_l·r, r = corr·m/(√v + eps_t) + λ·θ (as lamb_norms), η_l = rates[layer] (n_layers,)."""
    zero = type(lam)(0)
    for k in range(segs.shape[0]):
        lam_k = lam if segs[k, 3] else zero
        rate = rates[segs[k, 2]]
        start, stop = segs[k, 0], segs[k, 1]
        # over contiguous slices of fixed chunks, as layer_norms
        for c in prange((stop - start + SUM_CHUNK - 1) // SUM_CHUNK):
            a = start + c * SUM_CHUNK
            b = min(stop, a + SUM_CHUNK)
            P, M, V = params[a:b], m[a:b], v[a:b]
            for j in range(b - a):
                p = P[j]
                P[j] = p - rate * (corr * M[j] / (np.sqrt(V[j]) + eps_t) + lam_k * p)


# ---- the layer norms of lars and lamb: one kernel, specialised on the direction u whose norm it takes ----

def directions(rule, u, a, params, lam_k, state, coefs):
    """u[j] = the direction of the update `rule` ("lars" or "lamb") at θ[a + j], for j < len(u); only callable
    inside Numba code, rule a constant.

    lars: u = scale·∇L + λ·θ (state (grad,), coefs (scale,)).
    lamb: m ← β₁·m + (1−β₁)·g, v ← β₂·v + (1−β₂)·g² with g = scale·∇L, then u = r = corr·m/(√v + eps_t) + λ·θ
          = m̂/(√v̂ + ε) + λ·θ (state (grad, m, v), coefs (scale, β₁, β₂, corr, eps_t); corr = √(1−β₂ᵗ)/(1−β₁ᵗ),
          eps_t = ε·√(1−β₂ᵗ)).
    The loops run over contiguous slices of the chunk. The square root and the division vectorise under numpy's
    error model (grain.parallel_kernel): Python's checked each divisor for zero, which kept them scalar (2.4 against
    0.4 ns a parameter for this loop in float32).
    """
    raise TypeError("directions() is resolved inside Numba kernels only")


# not inline="always": numba's IR inlining lost lamb's writes to m and v (arrays unpacked from a tuple)
# inside the prange (numba 0.68); LLVM inlines the compiled call anyway, and the loop measured as fast
@overload(directions)
def _directions(rule, u, a, params, lam_k, state, coefs):
    if not isinstance(rule, types.StringLiteral):
        return None  # numba retries with the constant's literal type
    if rule.literal_value == "lars":
        def lars(rule, u, a, params, lam_k, state, coefs):
            grad, = state
            scale, = coefs
            n = u.shape[0]
            P, G = params[a:a + n], grad[a:a + n]
            for j in range(n):
                u[j] = scale * G[j] + lam_k * P[j]
        return lars
    if rule.literal_value == "lamb":
        def lamb(rule, u, a, params, lam_k, state, coefs):
            grad, m, v = state
            scale, beta1, beta2, corr, eps_t = coefs
            one = type(beta1)(1)
            n = u.shape[0]
            P, G, M, V = params[a:a + n], grad[a:a + n], m[a:a + n], v[a:a + n]
            for j in range(n):
                g = scale * G[j]
                mj = beta1 * M[j] + (one - beta1) * g
                vj = beta2 * V[j] + (one - beta2) * g * g
                M[j] = mj
                V[j] = vj
                u[j] = corr * mj / (np.sqrt(vj) + eps_t) + lam_k * P[j]
        return lamb
    raise ValueError(f"no layer-norm direction for {rule.literal_value!r}")


def _make_layer_norms(rule: str):
    # the factory closes over `rule`, a string constant: numba inlines the direction through it and caches
    # one entry per rule on disk (as distbp.nn.kernels does with activations)
    @parallel_kernel(UPDATE_GRAIN)
    def layer_norms(sums, params, state, coefs, segs, lam):
        """sums (n_layers, 2) float64 += (Σ θ², Σ u²) over each layer's pieces, u = directions(rule, …); in
        float64, by chunks of SUM_CHUNK elements (each summed in kernels.SUM_LANES interleaved partial sums)
        added in chunk order: the same for any thread count and any CPU."""
        zero = type(lam)(0)
        for k in range(segs.shape[0]):
            lam_k = lam if segs[k, 3] else zero
            start, stop = segs[k, 0], segs[k, 1]
            n_chunks = (stop - start + SUM_CHUNK - 1) // SUM_CHUNK
            partial = np.zeros((n_chunks, 2))
            for c in prange(n_chunks):
                a = start + c * SUM_CHUNK
                b = min(stop, a + SUM_CHUNK)
                u = np.empty(b - a, params.dtype)  # this chunk's directions (16 KiB in float32)
                directions(rule, u, a, params, lam_k, state, coefs)
                partial[c, 0] = kernels.lane_sum_of_squares(params[a:b])
                partial[c, 1] = kernels.lane_sum_of_squares(u)
            kernels.add_rows_into(sums[segs[k, 2]], partial)
    return layer_norms


# lars: the norms of θ and g = scale·∇L + λ·θ; lamb: Adam's moment update, and the norms of θ and r
lars_norms = _make_layer_norms("lars")
lamb_norms = _make_layer_norms("lamb")


def trust_ratios(sums: np.ndarray, coefficient: float = 1.0) -> np.ndarray:
    """coefficient·‖θ_l‖/‖u_l‖ per layer from sums (n_layers, 2) of (Σ θ², Σ u²); 1 where either norm is 0."""
    theta, u = np.sqrt(sums[:, 0]), np.sqrt(sums[:, 1])
    ok = (theta > 0) & (u > 0)
    return np.where(ok, coefficient * theta / np.where(ok, u, 1.0), 1.0)


# ---- which piece of the flat range is which ----------------------------------------------------------

@dataclass(frozen=True)
class Segments:
    """A flat range of parameters cut where layers and their W and b meet.

    pieces: (start, stop, layer, is_bias) in order, start/stop relative to the range, covering it;
    n_layers: the model's layer count (layers a sharded range does not touch have no piece).
    """

    pieces: tuple[tuple[int, int, int, bool], ...]
    n_layers: int

    @classmethod
    def whole(cls, n: int) -> Segments:
        """n parameters that are all the weights of one layer (an optimizer on a bare buffer)."""
        return cls(((0, n, 0, False),) if n else (), 1)

    @property
    def size(self) -> int:
        return self.pieces[-1][1] if self.pieces else 0

    def table(self, decay_biases: bool) -> np.ndarray:
        """(n_pieces, 4) int64 for the kernels: start, stop, layer, decayed (W always, b if decay_biases).

        Made per step (a few dozen bytes): the optimizer holds no buffer beyond its state, which the
        memory estimate counts exactly.
        """
        rows = [(a, b, layer, int(decay_biases or not bias)) for a, b, layer, bias in self.pieces]
        return np.array(rows, np.int64).reshape(-1, 4)


def segments_of(sizes: Sequence[int], lo: int = 0, hi: int | None = None) -> Segments:
    """The pieces of θ[lo:hi] of an MLP with these layer sizes: layer l's slice of the flat buffer holds
    its W (fan_in·fan_out elements) then its b (fan_out)."""
    pieces, start = [], 0
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w_end = start + fan_in * fan_out
        for a, b, bias in ((start, w_end, False), (w_end, w_end + fan_out, True)):
            a, b = max(a, lo), min(b, hi if hi is not None else b)
            if a < b:
                pieces.append((a - lo, b - lo, layer, bias))
        start = w_end + fan_out
    return Segments(tuple(pieces), len(sizes) - 1)


# ---- the optimizers ----------------------------------------------------------------------------------

class GD:
    """Plain gradient descent, exactly the seed's θ ← θ − η∇L; with λ > 0, L2 weight decay."""

    name = "gd"
    state_copies = 0  # state arrays of n_params elements each (for memory estimates)

    def __init__(self, n_params: int, dtype, lr: float, weight_decay: float = 0.0, decay_biases: bool = False,
                 segments: Segments | None = None, sum_over_ranks: Callable[[np.ndarray], None] | None = None,
                 l2: float = 0.0):
        """segments: what each element of the range is (default: one layer's weights); sum_over_ranks(a):
        sums the float64 array a over the ranks sharing this update in place (default: one rank holds it all);
        l2: α of the coupled L2 penalty (see the module's docstring)."""
        _check_lr(lr)
        for what, value in (("weight decay", weight_decay), ("the l2 penalty", l2)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{what} must be a number >= 0, got {value}")
        self.l2 = l2
        self.segments = segments if segments is not None else Segments.whole(n_params)
        if self.segments.size != n_params:
            raise ValueError(f"segments cover {self.segments.size} parameters, not {n_params}")
        self.dtype = np.dtype(dtype)
        self.lr = lr
        self.weight_decay, self.decay_biases = weight_decay, decay_biases
        self.sum_over_ranks = sum_over_ranks
        self.step_count = 0

    def step(self, params: np.ndarray, grad: np.ndarray, scale: float = 1.0) -> None:
        t = self.dtype.type
        lam = self.coupled_decay(scale)
        if lam:
            sized(gd_l2_update, params.size)(params, grad, t(self.lr), t(scale), self.table(), t(lam))
        else:
            sized(gd_update, params.size)(params, grad, t(self.lr * scale))
        self.step_count += 1

    def coupled_decay(self, scale: float) -> float:
        """λ added to the gradient as λ·θ: the weight decay, plus s·α of the L2 penalty (part of the summed loss)."""
        return self.weight_decay + self.l2 * scale if self.l2 else self.weight_decay

    def table(self) -> np.ndarray:
        return self.segments.table(self.decay_biases)

    def layer_sums(self) -> np.ndarray:
        """A zeroed (n_layers, 2) float64 array for per-layer sums of squares."""
        return np.zeros((self.segments.n_layers, 2))

    def sum_layers_over_ranks(self, sums: np.ndarray) -> np.ndarray:
        """[dist when sharded] the per-layer sums over every rank's part, the same on every rank."""
        if self.sum_over_ranks is not None:
            self.sum_over_ranks(sums)
        return sums

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The optimizer's state buffers (views, not copies), by name."""
        return {}

    def load_state(self, arrays: dict[str, np.ndarray], step_count: int) -> None:
        for key, target in self.state_arrays().items():
            if key not in arrays:
                raise ValueError(f"optimizer state has no {key!r} array")
            if arrays[key].shape != target.shape:
                raise ValueError(f"optimizer state {key!r} has shape {arrays[key].shape}, expected {target.shape}")
            if arrays[key] is not target:  # a kept job's own buffers come back as they are (distbp.train.kept)
                target[...] = arrays[key]
        self.step_count = int(step_count)


class Momentum(GD):
    """Gradient descent with heavy-ball momentum μ (and L2 weight decay with λ > 0)."""

    name = "momentum"
    state_copies = 1

    def __init__(self, n_params: int, dtype, lr: float, momentum: float = 0.9, **common):
        super().__init__(n_params, dtype, lr, **common)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.mu = momentum
        self.velocity = np.zeros(n_params, self.dtype)

    def step(self, params, grad, scale=1.0):
        t = self.dtype.type
        lam = self.coupled_decay(scale)
        if lam:
            sized(momentum_l2_update, params.size)(params, grad, self.velocity, t(self.lr), t(scale), t(self.mu),
                                                   self.table(), t(lam))
        else:
            sized(momentum_update, params.size)(params, grad, self.velocity, t(self.lr), t(scale), t(self.mu))
        self.step_count += 1

    def state_arrays(self):
        return {"velocity": self.velocity}


class Adam(GD):
    """Adam with β₁, β₂, ε; bias-corrected; decoupled weight decay (AdamW) with λ > 0."""

    name = "adam"
    state_copies = 2

    def __init__(self, n_params: int, dtype, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, **common):
        super().__init__(n_params, dtype, lr, **common)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1) or eps <= 0:
            raise ValueError(f"adam needs 0 <= beta1, beta2 < 1 and eps > 0, got {beta1}, {beta2}, {eps}")
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m = np.zeros(n_params, self.dtype)
        self.v = np.zeros(n_params, self.dtype)

    def corrections(self) -> tuple[float, float]:
        """(c1, c2) = (1 − β₁ᵗ, 1 − β₂ᵗ) of this step: m̂ = m/c1, v̂ = v/c2."""
        return 1 - self.beta1 ** self.step_count, 1 - self.beta2 ** self.step_count

    def step(self, params, grad, scale=1.0):
        self.step_count += 1
        c1, c2 = self.corrections()
        # θ -= η·m̂/(√v̂ + ε), rewritten without dividing m and v
        lr_t = self.lr * np.sqrt(c2) / c1
        eps_t = self.eps * np.sqrt(c2)
        t = self.dtype.type
        if self.l2:
            sized(adam_l2_update, params.size)(params, grad, self.m, self.v, t(lr_t), t(scale), t(self.beta1),
                                               t(self.beta2), t(eps_t), self.table(), t(self.l2 * scale),
                                               t(self.lr * self.weight_decay))
        elif self.weight_decay:
            sized(adamw_update, params.size)(params, grad, self.m, self.v, t(lr_t), t(scale), t(self.beta1),
                                             t(self.beta2), t(eps_t), self.table(), t(self.lr * self.weight_decay))
        else:
            sized(adam_update, params.size)(params, grad, self.m, self.v, t(lr_t), t(scale), t(self.beta1),
                                            t(self.beta2), t(eps_t))

    def state_arrays(self):
        return {"m": self.m, "v": self.v}


class LARS(Momentum):
    """Layer-wise adaptive rate scaling (You et al. 2017): momentum with a per-layer rate η·τ·‖θ_l‖/‖g_l‖."""

    name = "lars"
    state_copies = 1

    def __init__(self, n_params: int, dtype, lr: float, momentum: float = 0.9, trust: float = 0.001, **common):
        super().__init__(n_params, dtype, lr, momentum, **common)
        _refuse_l2(self)
        if not (np.isfinite(trust) and trust >= 0):
            raise ValueError(f"the lars trust coefficient must be a number >= 0, got {trust}")
        self.trust = trust

    def step(self, params, grad, scale=1.0):
        t, table = self.dtype.type, self.table()
        sums = self.layer_sums()
        sized(lars_norms, params.size)(sums, params, (grad,), (t(scale),), table, t(self.weight_decay))
        rates = (self.lr * trust_ratios(self.sum_layers_over_ranks(sums), self.trust)).astype(self.dtype)
        sized(lars_update, params.size)(params, grad, self.velocity, rates, t(scale), t(self.mu), table,
                                        t(self.weight_decay))
        self.step_count += 1


class LAMB(Adam):
    """Layer-wise adaptive moments (You et al. 2019): the AdamW direction r, scaled per layer to η·‖θ_l‖/‖r_l‖."""

    name = "lamb"
    state_copies = 2

    def __init__(self, n_params: int, dtype, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-6, **common):
        super().__init__(n_params, dtype, lr, beta1, beta2, eps, **common)
        _refuse_l2(self)

    def step(self, params, grad, scale=1.0):
        self.step_count += 1
        c1, c2 = self.corrections()
        # m̂/(√v̂ + ε) = corr·m/(√v + eps_t), as in Adam
        corr, eps_t = np.sqrt(c2) / c1, self.eps * np.sqrt(c2)
        t, table = self.dtype.type, self.table()
        sums = self.layer_sums()
        sized(lamb_norms, params.size)(sums, params, (grad, self.m, self.v),
                                       (t(scale), t(self.beta1), t(self.beta2), t(corr), t(eps_t)), table,
                                       t(self.weight_decay))
        rates = (self.lr * trust_ratios(self.sum_layers_over_ranks(sums))).astype(self.dtype)
        sized(lamb_update, params.size)(params, self.m, self.v, rates, t(corr), t(eps_t), table, t(self.weight_decay))


OPTIMIZERS = {"gd": GD, "momentum": Momentum, "adam": Adam, "lars": LARS, "lamb": LAMB}


def make_optimizer(name: str, n_params: int, dtype, lr: float, **options) -> GD:
    """An optimizer by name (gd, momentum, adam, lars, lamb) for a flat buffer of n_params."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}") from None
    return cls(n_params, dtype, lr, **options)


def _refuse_l2(opt: GD) -> None:
    """lars and lamb take their decay inside the layer-wise rates (weight_decay), not an l2 penalty."""
    if opt.l2:
        raise ValueError(f"{opt.name} takes weight_decay, not the l2 penalty (gd, momentum and adam do)")


def _check_lr(lr: float) -> None:
    if not (np.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {lr}")
