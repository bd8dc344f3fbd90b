"""The backpropagation core: gradients are right, the loss is a sum, bad input is named."""

import itertools

import numpy as np
import pytest

from distbp import MLP
from distbp.nn.activations import ACTIVATIONS, sigmoid
from tests.helpers import reference

SIZES = [5, 7, 6, 3]


def problem(loss, n=11, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, SIZES[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, SIZES[-1], n)
    else:
        y = rng.standard_normal((n, SIZES[-1])).astype(dtype)
    return X, y


def flat(grads):
    return np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in grads])


CASES = list(itertools.product(sorted(ACTIVATIONS), ["cross_entropy", "mse"]))


@pytest.mark.parametrize("activation,loss", CASES)
def test_gradients_equal_central_finite_differences(activation, loss):
    model = MLP(SIZES, activation=activation, loss=loss, dtype="float64", seed=3)
    X, y = problem(loss)
    if activation == "relu":
        X += 0.05  # keep the check away from relu's kink at 0 on this seed
    _, grads = model.loss_and_grad(X, y)
    analytic = flat(grads)
    theta = model.flat_params
    numeric = np.empty_like(theta)
    h = 1e-6
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + h
        lp, _ = model.loss_and_grad(X, y)
        theta[i] = old - h
        lm, _ = model.loss_and_grad(X, y)
        theta[i] = old
        numeric[i] = (lp - lm) / (2 * h)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic + numeric)
    assert rel < 1e-6


@pytest.mark.parametrize("activation,loss", CASES)
def test_matches_plain_numpy_reference_in_float64(activation, loss):
    model = MLP(SIZES, activation=activation, loss=loss, dtype="float64", seed=4)
    X, y = problem(loss, n=17)
    L, grads = model.loss_and_grad(X, y)
    params = [(W.copy(), b.copy()) for W, b in model.params]
    L_ref, grads_ref = reference.loss_and_grad(params, [activation] * 2, loss, X, y)
    assert L == pytest.approx(L_ref, rel=1e-12, abs=1e-12)
    for (dW, db), (rW, rb) in zip(grads, grads_ref):
        np.testing.assert_allclose(dW, rW, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(db, rb, rtol=1e-12, atol=1e-12)


def test_the_configuration_accepts_exactly_the_implemented_activations():
    from distbp.config import ACTIVATION_NAMES  # checked without importing Numba
    assert sorted(ACTIVATION_NAMES) == sorted(ACTIVATIONS)


def test_one_activation_per_hidden_layer():
    model = MLP(SIZES, activation=["tanh", "relu"], loss="cross_entropy", dtype="float64", seed=5)
    X, y = problem("cross_entropy")
    L, grads = model.loss_and_grad(X, y)
    params = [(W.copy(), b.copy()) for W, b in model.params]
    L_ref, grads_ref = reference.loss_and_grad(params, ["tanh", "relu"], "cross_entropy", X, y)
    assert L == pytest.approx(L_ref, rel=1e-12)
    np.testing.assert_allclose(flat(grads), flat(grads_ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation,loss", CASES)
def test_float32_matches_float64_to_float32_tolerance(activation, loss):
    m64 = MLP(SIZES, activation=activation, loss=loss, dtype="float64", seed=6)
    m32 = MLP(SIZES, activation=activation, loss=loss, dtype="float32", seed=6)
    assert m32.flat_params.dtype == np.float32
    np.testing.assert_allclose(m32.flat_params, m64.flat_params, rtol=1e-6)
    X, y = problem(loss, n=32)
    L64, g64 = m64.loss_and_grad(X, y)
    L32, g32 = m32.loss_and_grad(X.astype(np.float32), y if loss == "cross_entropy" else y.astype(np.float32))
    assert all(dW.dtype == np.float32 for dW, _ in g32)
    assert L32 == pytest.approx(L64, rel=1e-5)
    np.testing.assert_allclose(flat(g32), flat(g64), rtol=1e-3, atol=1e-4 * np.abs(flat(g64)).max())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_loss_and_gradient_are_sums_over_any_split_of_the_rows(loss):
    model = MLP(SIZES, activation="sigmoid", loss=loss, dtype="float64", seed=7)
    X, y = problem(loss, n=23)
    L, grads = model.loss_and_grad(X, y)
    for cuts in ([5], [1, 2, 20], [11, 12], [22]):
        bounds = [0, *cuts, len(X)]
        parts = [model.loss_and_grad(X[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        assert sum(p[0] for p in parts) == pytest.approx(L, rel=1e-12)
        np.testing.assert_allclose(sum(flat(p[1]) for p in parts), flat(grads), rtol=1e-10, atol=1e-12)


def test_returned_gradients_belong_to_the_caller():
    model = MLP(SIZES, dtype="float64")
    X, y = problem("cross_entropy")
    _, g1 = model.loss_and_grad(X, y)
    keep = flat(g1).copy()
    model.loss_and_grad(X[:3], y[:3])
    np.testing.assert_array_equal(flat(g1), keep)


def test_loss_and_grad_into_writes_the_flat_buffer_and_tells_hooks_output_layer_first():
    model = MLP(SIZES, dtype="float64")
    X, y = problem("cross_entropy")
    L, grads = model.loss_and_grad(X, y)
    buf = np.full(model.n_params, np.nan)
    seen = []

    class Hooks:
        def layer_ready(self, layer):
            # the layer's slice is final when announced
            np.testing.assert_allclose(buf[model.layer_slices[layer]], flat(grads)[model.layer_slices[layer]])
            seen.append(layer)

        def progress(self):
            pass

    assert model.loss_and_grad_into(X, y, buf, hooks=Hooks(), progress_chunks=3) == pytest.approx(L)
    assert seen == [2, 1, 0]
    np.testing.assert_allclose(buf, flat(grads))


def test_empty_shard_gives_zero_loss_and_zero_gradient():
    model = MLP(SIZES, dtype="float64")
    buf = np.ones(model.n_params)
    assert model.loss_and_grad_into(np.empty((0, SIZES[0])), np.empty(0, np.int64), buf) == 0.0
    assert not buf.any()


def test_params_are_views_of_one_flat_buffer():
    model = MLP([4, 3, 2])
    assert [(W.shape, b.shape) for W, b in model.params] == [((4, 3), (3,)), ((3, 2), (2,))]
    model.flat_params[:] = 0
    assert not any(W.any() or b.any() for W, b in model.params)
    assert model.n_params == 4 * 3 + 3 + 3 * 2 + 2


def test_predict_gives_probabilities_for_cross_entropy_and_linear_outputs_for_mse():
    X, _ = problem("cross_entropy")
    p = MLP(SIZES, loss="cross_entropy", dtype="float64").predict(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    model = MLP(SIZES, loss="mse", dtype="float64")
    params = [(W.copy(), b.copy()) for W, b in model.params]
    a = X
    for W, b in params[:-1]:
        a = 1 / (1 + np.exp(-(a @ W + b)))
    np.testing.assert_allclose(model.predict(X), a @ params[-1][0] + params[-1][1], rtol=1e-12)


def test_softmax_cross_entropy_and_sigmoid_stay_finite_for_huge_inputs():
    model = MLP([2, 3, 2], activation="sigmoid", dtype="float32")
    X = np.array([[1e4, -1e4], [-3e4, 3e4]], np.float32)
    L, grads = model.loss_and_grad(X, np.array([0, 1]))
    assert np.isfinite(L) and np.isfinite(flat(grads)).all()
    big = MLP([2, 2], loss="cross_entropy", dtype="float32")
    big.params[0][0][...] = [[1e4, -1e4], [0, 0]]
    L, grads = big.loss_and_grad(np.array([[100.0, 0]], np.float32), np.array([1]))
    assert np.isfinite(L) and L == pytest.approx(2e6, rel=1e-6)
    assert np.isfinite(flat(grads)).all()


def test_sigmoid_limits_are_exact():
    assert sigmoid(np.float64(-1000.0)) == 0.0
    assert sigmoid(np.float64(1000.0)) == 1.0
    assert sigmoid(np.float32(-200.0)) == 0.0


def test_gradient_descent_reduces_the_loss_on_a_separable_problem():
    from distbp import GD

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    model = MLP([2, 8, 2], activation="tanh", dtype="float64", seed=0)
    opt = GD(model.n_params, model.dtype, lr=0.01)
    grad = np.empty(model.n_params)
    first = model.loss_and_grad_into(X, y, grad)
    for _ in range(50):
        loss = model.loss_and_grad_into(X, y, grad)
        opt.step(model.flat_params, grad)
    assert loss < 0.3 * first
    assert (model.predict(X).argmax(axis=1) == y).mean() > 0.95


def test_training_on_digits_reaches_95_percent_held_out_accuracy():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is in the test extra")
    from distbp import Adam

    X, y = datasets.load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X = (X / 16.0).astype(np.float32)[order]
    y = y[order]
    Xtr, ytr, Xte, yte = X[:1500], y[:1500], X[1500:], y[1500:]
    model = MLP([64, 64, 10], activation="relu", seed=0)
    opt = Adam(model.n_params, model.dtype, lr=1e-3)
    grad = np.empty(model.n_params, model.dtype)
    for epoch in range(30):
        perm = rng.permutation(len(Xtr))
        for s in range(0, len(perm), 64):
            rows = perm[s:s + 64]
            model.loss_and_grad_into(Xtr[rows], ytr[rows], grad)
            opt.step(model.flat_params, grad, scale=1 / len(rows))
    accuracy = (model.predict(Xte).argmax(axis=1) == yte).mean()
    assert accuracy >= 0.95


BAD = [
    ("wrong number of features", lambda m: m.loss_and_grad(np.zeros((3, 4)), np.zeros(3, np.int64)), "features"),
    ("label out of range", lambda m: m.loss_and_grad(np.zeros((3, 5)), np.array([0, 1, 3])), "out of range"),
    ("negative label", lambda m: m.loss_and_grad(np.zeros((3, 5)), np.array([0, -1, 2])), "out of range"),
    ("float labels", lambda m: m.loss_and_grad(np.zeros((3, 5)), np.array([0.0, 1.0, 2.0])), "integers"),
    ("labels of wrong length", lambda m: m.loss_and_grad(np.zeros((3, 5)), np.array([0, 1])), "rows"),
    ("NaN in inputs", lambda m: m.loss_and_grad(np.full((3, 5), np.nan), np.zeros(3, np.int64)), "NaN"),
    ("Inf in inputs", lambda m: m.predict(np.full((3, 5), np.inf)), "Inf"),
    ("empty batch", lambda m: m.loss_and_grad(np.zeros((0, 5)), np.zeros(0, np.int64)), "empty"),
    ("1-D input", lambda m: m.predict(np.zeros(5)), "2-D"),
    ("integer inputs", lambda m: m.predict(np.zeros((2, 5), np.int64)), "floating"),
]


@pytest.mark.parametrize("case,call,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_value_error(case, call, words):
    model = MLP([5, 4, 3], dtype="float64")
    with pytest.raises(ValueError, match=words):
        call(model)


@pytest.mark.parametrize("kwargs,words", [
    (dict(sizes=[5]), "at least"),
    (dict(sizes=[5, 0, 3]), "positive"),
    (dict(sizes=[5, 4, 3], activation="swish"), "unknown activation"),
    (dict(sizes=[5, 4, 3], loss="hinge"), "unknown loss"),
    (dict(sizes=[5, 4, 4, 3], activation=["relu"]), "1 activations given for 2 hidden layers"),
    (dict(sizes=[5, 3], dtype="float16"), "float32 or float64"),
])
def test_bad_model_configuration_is_a_clear_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MLP(**kwargs)


def test_mse_targets_must_match_the_output_width():
    model = MLP([5, 4, 3], loss="mse", dtype="float64")
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        model.loss_and_grad(np.zeros((2, 5)), np.zeros((2, 2)))
