"""Weight decay, gradient clipping, LARS and LAMB follow the papers' update rules.

Each optimizer is run for several steps beside a plain-numpy twin of its rule written here, one tensor
at a time (float64, 1e-12); the strategies' clipping is checked against numpy's norm. Serial tests;
tests/mpi/test_regularisers_mpi.py runs the same options on p ranks and with the optimizer state sharded.
"""

import numba
import numpy as np
import pytest

from distbp import MLP
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import ConfigError
from distbp.nn import kernels, optim
from distbp.nn.optim import make_optimizer, segments_of
from distbp.sync import factory as sync
from distbp.sync.base import Layout, ModelShape
from distbp.train import loop
from distbp.train.setup import setup
from distbp.train.warmup import warm_kernels

SIZES = [5, 4, 3]  # layer 0: W 20 + b 4; layer 1: W 12 + b 3
TOL = 1e-12


# ---- the papers' rules in plain numpy: θ, ∇L and the state are dicts {(layer, "W" or "b"): array} ----

def decay_of(key, weight_decay, decay_biases):
    """λ of one tensor: weights always, biases only with decay_biases."""
    return weight_decay if key[1] == "W" or decay_biases else 0.0


def layer_norm(tensors, layer):
    """‖·‖₂ over one layer's W and b together."""
    return np.sqrt(sum(np.sum(x ** 2) for key, x in tensors.items() if key[0] == layer))


def trust(theta_norm, update_norm, coefficient=1.0):
    """The layer's ratio coefficient·‖θ_l‖/‖u_l‖, 1 when either norm is 0."""
    return coefficient * theta_norm / update_norm if theta_norm > 0 and update_norm > 0 else 1.0


def gd_rule(theta, grad, state, t, lr, s, lam):
    """θ ← θ − η·(s·∇L + λθ)."""
    for k in theta:
        theta[k] = theta[k] - lr * (s * grad[k] + lam[k] * theta[k])


def momentum_rule(theta, grad, state, t, lr, s, lam, momentum=0.9):
    """v ← μv + (s·∇L + λθ); θ ← θ − η·v."""
    for k in theta:
        state[k] = momentum * state.get(k, 0.0) + (s * grad[k] + lam[k] * theta[k])
        theta[k] = theta[k] - lr * state[k]


def adamw_rule(theta, grad, state, t, lr, s, lam, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam's m̂/(√v̂ + ε) step and, decoupled, θ ← θ − η·λθ (Loshchilov & Hutter)."""
    for k in theta:
        g = s * grad[k]
        m = state[k, "m"] = beta1 * state.get((k, "m"), 0.0) + (1 - beta1) * g
        v = state[k, "v"] = beta2 * state.get((k, "v"), 0.0) + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        theta[k] = theta[k] - lr * m_hat / (np.sqrt(v_hat) + eps) - lr * lam[k] * theta[k]


def lars_rule(theta, grad, state, t, lr, s, lam, momentum=0.9, trust_coefficient=0.001):
    """You et al. 2017, one ratio per layer: g = s·∇L + λθ; η_l = η·τ·‖θ_l‖/‖g_l‖; v ← μv + η_l·g; θ ← θ − v."""
    g = {k: s * grad[k] + lam[k] * theta[k] for k in theta}
    rate = {layer: lr * trust(layer_norm(theta, layer), layer_norm(g, layer), trust_coefficient)
            for layer in {k[0] for k in theta}}
    for k in theta:
        state[k] = momentum * state.get(k, 0.0) + rate[k[0]] * g[k]
        theta[k] = theta[k] - state[k]


def lamb_rule(theta, grad, state, t, lr, s, lam, beta1=0.9, beta2=0.999, eps=1e-6):
    """You et al. 2019: r = m̂/(√v̂ + ε) + λθ; θ_l ← θ_l − η·(‖θ_l‖/‖r_l‖)·r_l."""
    r = {}
    for k in theta:
        g = s * grad[k]
        m = state[k, "m"] = beta1 * state.get((k, "m"), 0.0) + (1 - beta1) * g
        v = state[k, "v"] = beta2 * state.get((k, "v"), 0.0) + (1 - beta2) * g * g
        r[k] = (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps) + lam[k] * theta[k]
    ratio = {layer: trust(layer_norm(theta, layer), layer_norm(r, layer)) for layer in {k[0] for k in theta}}
    for k in theta:
        theta[k] = theta[k] - lr * ratio[k[0]] * r[k]


RULES = {"gd": gd_rule, "momentum": momentum_rule, "adam": adamw_rule, "lars": lars_rule, "lamb": lamb_rule}
# the rules' options under the optimizers' names
OPTIONS = {"gd": {}, "momentum": {"momentum": 0.8}, "adam": {}, "lars": {"momentum": 0.8, "trust": 0.02},
           "lamb": {}}


def rule_options(name):
    return {("trust_coefficient" if k == "trust" else k): v for k, v in OPTIONS[name].items()}


def by_tensor(model, flat):
    """{(layer, "W"/"b"): a copy} of a flat buffer."""
    return {key: x.copy() for l, (W, b) in enumerate(model.views(flat)) for key, x in (((l, "W"), W), ((l, "b"), b))}


def flat_of(model, tensors):
    return np.concatenate([tensors[l, kind].reshape(-1) for l in range(model.n_layers) for kind in ("W", "b")])


def run_beside_the_rule(name, weight_decay, decay_biases, steps=5, zero_layer=None, l2=0.0):
    """(the optimizer's θ, the rule's θ) after `steps` steps on random gradients with a changing η.

    l2: α of the L2 penalty, which the rule adds to ∇L as α·θ (the penalty's gradient, before the scale s)."""
    model = MLP(SIZES, dtype="float64", seed=1)
    flat = model.flat_params.copy()
    if zero_layer is not None:
        flat[model.layer_slices[zero_layer]] = 0.0
    theta = by_tensor(model, flat)
    opt = make_optimizer(name, model.n_params, "float64", lr=0.1, weight_decay=weight_decay,
                         decay_biases=decay_biases, segments=segments_of(SIZES), l2=l2, **OPTIONS[name])
    lam = {k: decay_of(k, weight_decay, decay_biases) for k in theta}
    rng, state, scale = np.random.default_rng(2), {}, 0.25
    for t in range(1, steps + 1):
        grad = rng.normal(size=model.n_params)
        opt.lr = 0.1 * (1 + 0.5 * t)  # a schedule's η: read at every step
        opt.step(flat, grad, scale)
        penalised = {k: g + decay_of(k, l2, decay_biases) * theta[k] for k, g in by_tensor(model, grad).items()}
        RULES[name](theta, penalised, state, t, opt.lr, scale, lam, **rule_options(name))
    return flat, flat_of(model, theta)


CASES = [(0.0, False), (0.05, False), (0.05, True)]  # (λ, decay_biases)


@pytest.mark.parametrize("weight_decay,decay_biases", CASES)
@pytest.mark.parametrize("name", ["gd", "momentum", "adam"])
def test_weight_decay_is_l2_for_gd_and_momentum_and_decoupled_for_adam(name, weight_decay, decay_biases):
    ours, rule = run_beside_the_rule(name, weight_decay, decay_biases)
    assert np.abs(ours - rule).max() < TOL


@pytest.mark.parametrize("weight_decay,decay_biases", CASES)
@pytest.mark.parametrize("name", ["gd", "momentum", "adam"])
def test_the_l2_penalty_enters_the_gradient_before_the_scale_for_gd_momentum_and_adam(name, weight_decay,
                                                                                       decay_biases):
    # g = s·(∇L + α·θ): the penalty is part of the summed loss, coupled (through the velocity and Adam's moments),
    # beside the weight decay λ (coupled for gd and momentum, decoupled for adam)
    ours, rule = run_beside_the_rule(name, weight_decay, decay_biases, l2=0.3)
    assert np.abs(ours - rule).max() < TOL
    without, _ = run_beside_the_rule(name, weight_decay, decay_biases)
    assert np.abs(ours - without).max() > 1e3 * TOL


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_lars_and_lamb_refuse_the_l2_penalty(name):
    with pytest.raises(ValueError, match=f"{name} takes weight_decay, not the l2 penalty"):
        make_optimizer(name, 10, "float64", lr=0.1, l2=0.01)
    with pytest.raises(ConfigError, match="--l2 goes with gd, momentum and adam"):
        validate(Config(optimizer=name, l2=0.01))


@pytest.mark.parametrize("weight_decay,decay_biases", CASES)
def test_lars_is_momentum_with_one_trust_ratio_per_layer(weight_decay, decay_biases):
    ours, rule = run_beside_the_rule("lars", weight_decay, decay_biases)
    assert np.abs(ours - rule).max() < TOL


@pytest.mark.parametrize("weight_decay,decay_biases", CASES)
def test_lamb_is_adamw_scaled_per_layer_to_the_parameters_norm(weight_decay, decay_biases):
    ours, rule = run_beside_the_rule("lamb", weight_decay, decay_biases)
    assert np.abs(ours - rule).max() < TOL


@pytest.mark.parametrize("name", ["lars", "lamb"])
def test_a_layer_at_zero_takes_the_ratio_one(name):
    # ‖θ_1‖ = 0 at the start: the ratio is 1 (the step is η·g, or η·r) rather than 0
    ours, rule = run_beside_the_rule(name, 0.05, False, steps=3, zero_layer=1)
    assert np.abs(ours - rule).max() < TOL
    assert np.abs(ours[MLP(SIZES).layer_slices[1]]).min() > 0


@pytest.mark.parametrize("decay_biases", [False, True])
def test_weight_decay_shrinks_biases_only_when_asked(decay_biases):
    model = MLP(SIZES, dtype="float64", seed=1)
    model.flat_params[...] = 1.0
    opt = make_optimizer("gd", model.n_params, "float64", lr=0.1, weight_decay=0.5, decay_biases=decay_biases,
                         segments=segments_of(SIZES))
    opt.step(model.flat_params, np.zeros(model.n_params))  # no gradient: only the decay moves θ
    for W, b in model.params:
        assert np.all(W == 1 - 0.1 * 0.5)
        assert np.all(b == (1 - 0.1 * 0.5 if decay_biases else 1.0))


def test_segments_name_the_layer_and_kind_of_every_element_of_a_part():
    # 39 parameters; the part [10, 30) cuts layer 0's W, holds its b, and cuts layer 1's W
    assert segments_of(SIZES).pieces == ((0, 20, 0, False), (20, 24, 0, True), (24, 36, 1, False), (36, 39, 1, True))
    assert segments_of(SIZES, 10, 30).pieces == ((0, 10, 0, False), (10, 14, 0, True), (14, 20, 1, False))
    assert segments_of(SIZES, 10, 30).n_layers == 2
    assert segments_of(SIZES, 37, 39).pieces == ((0, 2, 1, True),)


# ---- clipping, in the strategies -----------------------------------------------------------------------

STRATEGY_FLAGS = {"allreduce": {}, "sharded": dict(shard_optimizer=True), "exact": dict(reproducible=True)}


def built(strategy, **flags):
    """A strategy built on one rank for a float64 model of SIZES (no data: its gradient is set by hand)."""
    cfg = validate(Config(layers=SIZES, dtype="float64", lr=0.1, progress="none", timeout=0,
                          **{**STRATEGY_FLAGS[strategy], **flags}))
    s = sync.make_sync(cfg, Layout(), ModelShape(tuple(SIZES), np.dtype("float64")))
    model = MLP(SIZES, dtype="float64", seed=1)
    s.build(SerialComm(), model)
    assert s.name == strategy
    return s, model


def apply_gradient(s, model, grad, scale):
    (s.part if s.name == "sharded" else s.grad)[...] = grad  # one rank: its part is all of ∇L
    s.apply(model.flat_params, scale)


@pytest.mark.parametrize("strategy", STRATEGY_FLAGS)
def test_clipping_scales_the_gradient_down_to_the_norm_and_reports_the_norm(strategy):
    s, model = built(strategy, clip_grad_norm=0.5)
    rng, scale, norms = np.random.default_rng(3), 0.25, []
    for _ in range(3):
        grad, before = rng.normal(size=model.n_params), model.flat_params.copy()
        apply_gradient(s, model, grad, scale)
        norm = np.linalg.norm(scale * grad)
        norms.append(norm)
        assert s.clip.last_norm == pytest.approx(norm, rel=TOL)
        # gd: the step is η·(s·∇L)·c/‖s·∇L‖, of norm η·c
        assert np.abs(model.flat_params - (before - 0.1 * scale * grad * 0.5 / norm)).max() < TOL
    assert s.stats["grad_norm"] == pytest.approx(np.mean(norms), rel=TOL)
    assert s.stats["clipped_steps"] == 3
    s.reset_stats()
    assert s.stats["clipped_steps"] == 0


@pytest.mark.parametrize("strategy", STRATEGY_FLAGS)
def test_clipping_leaves_a_small_gradient_alone(strategy):
    grad = np.random.default_rng(4).normal(size=39)
    clipped, model = built(strategy, clip_grad_norm=2 * np.linalg.norm(0.25 * grad), optimizer="adam")
    plain, twin = built(strategy, optimizer="adam")
    apply_gradient(clipped, model, grad, 0.25)
    apply_gradient(plain, twin, grad, 0.25)
    assert model.flat_params.tobytes() == twin.flat_params.tobytes()
    assert clipped.stats["clipped_steps"] == 0
    assert "grad_norm" not in plain.stats  # no clipping, no norm computed


def test_the_norm_is_summed_in_fixed_chunks_whatever_the_thread_count():
    x = np.random.default_rng(5).normal(size=3 * kernels.SUM_CHUNK + 17).astype(np.float32)
    threads = numba.get_num_threads()
    sums = set()
    for n in range(1, threads + 1):
        numba.set_num_threads(n)
        sums.add(kernels.sum_of_squares(x))
    numba.set_num_threads(threads)
    assert len(sums) == 1
    assert sums.pop() == pytest.approx(np.sum(x.astype(np.float64) ** 2), rel=TOL)


# ---- what a run holds and compiles -------------------------------------------------------------------

SMALL = "synthetic:rows=230,features=10,classes=3,test=30"
RUNS = {
    "lars, weight decay, clipping (float32)": dict(optimizer="lars", weight_decay=1e-3, clip_grad_norm=1.0),
    "lamb sharded, biases decayed": dict(optimizer="lamb", shard_optimizer=True, weight_decay=0.01,
                                         decay_biases=True, clip_grad_norm=1.0, dtype="float64"),
    "adamw reproducible": dict(optimizer="adam", reproducible=True, micro_batch=8, weight_decay=0.01,
                               clip_grad_norm=1.0),
    "gd weight decay accumulate 2": dict(optimizer="gd", weight_decay=0.01, accumulate=2),
    "momentum weight decay": dict(optimizer="momentum", weight_decay=0.01, dtype="float64"),
    "adam l2 and weight decay": dict(optimizer="adam", l2=0.01, weight_decay=0.01),
    "gd l2 sharded, biases too": dict(optimizer="gd", l2=0.01, shard_optimizer=True, decay_biases=True,
                                      dtype="float64"),
}


def run_config(**flags) -> Config:
    return validate(Config(**{**dict(data=SMALL, layers=[10, 7, 3], epochs=1, batch_size=40, lr=0.01,
                                     progress="none", timeout=0), **flags}))


@pytest.mark.parametrize("flags", RUNS.values(), ids=list(RUNS))
def test_the_memory_estimate_counts_what_lars_lamb_and_weight_decay_allocate(flags):
    from distbp.train import memory
    from tests.helpers import memcheck

    r = setup(run_config(**flags), SerialComm())
    loop.fit(r)
    r.watchdog.stop()
    assert memory.per_rank(r.sync)["total"] == memcheck.allocated_bytes(r, skip=(r.data, r.comm))


@pytest.mark.parametrize("flags", RUNS.values(), ids=list(RUNS))
def test_the_warm_up_calls_every_update_kernel_a_step_calls(flags, monkeypatch):
    # every call of an optimizer or norm kernel is recorded with its argument types (what Numba compiles
    # for): training may only call what the warm-up already called, so nothing compiles during training
    calls, phase = {"warm-up": set(), "training": set()}, ["warm-up"]
    entry_points = [(optim, name) for name, f in vars(optim).items()
                    if isinstance(f, numba.core.registry.CPUDispatcher)]
    for module, name in [*entry_points, (kernels, "sum_of_squares")]:
        def recorded(*args, _kernel=getattr(module, name), _name=name):
            calls[phase[0]].add((_name, tuple(numba.typeof(a) for a in args)))
            return _kernel(*args)
        recorded.serial, recorded.grain = recorded, 0  # a kernel's grain interface (distbp.nn.grain.sized)
        monkeypatch.setattr(module, name, recorded)
    r = setup(run_config(**flags), SerialComm())
    warm_kernels(r.model, r.cfg.optimizer, r.sync)
    phase[0] = "training"
    loop.fit(r)
    r.watchdog.stop()
    assert calls["training"] and calls["training"] <= calls["warm-up"], calls["training"] - calls["warm-up"]


@pytest.mark.parametrize("optimizer", ["lars", "lamb"])
def test_accumulated_micro_batches_train_what_one_pass_trains(optimizer):
    # the features act on ∇L after the sum, so --accumulate (the sum in K micro-batches) changes only rounding
    def trained(accumulate):
        cfg = validate(Config(data="synthetic:rows=230,features=10,classes=3,test=30", layers=[10, 7, 3],
                              dtype="float64", epochs=2, batch_size=40, lr=0.05, optimizer=optimizer,
                              weight_decay=0.01, clip_grad_norm=0.5, warmup_steps=3, lr_schedule="cosine",
                              accumulate=accumulate, progress="none", timeout=0))
        r = setup(cfg, SerialComm())
        loop.fit(r)
        r.watchdog.stop()
        return r.model.flat_params

    assert np.abs(trained(3) - trained(1)).max() < 1e-10
