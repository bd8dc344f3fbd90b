"""Dropout whose masks are a pure function of (seed, step, global row, layer, unit): inverted dropout in training
(a·mask/(1−p)), the same mask on the backward pass, none in evaluation or prediction; so accumulation, the
exact mode and a resume see the very masks an uninterrupted one-rank run sees."""

import numpy as np
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.errors import ConfigError
from distbp.nn import kernels
from distbp.nn.model import MLP

M1, M2, GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * M1
    x = (x ^ (x >> np.uint64(27))) * M2
    return x ^ (x >> np.uint64(31))


def twin_mask(seed: int, step: int, layer: int, rows: np.ndarray, units: int, p: float) -> np.ndarray:
    """The numpy twin of the kernels' keep-or-drop: (len(rows), units) of 0/1."""
    one = lambda v: np.array([v], np.uint64)  # noqa: E731 — uint64 arrays wrap like the kernels' scalars
    key = mix(mix(mix(one(seed) + GOLDEN) ^ one(step)) ^ one(layer))
    r = mix(key ^ rows.astype(np.uint64))[:, None]
    h = mix(r + np.arange(units, dtype=np.uint64)[None, :] * GOLDEN)
    return ((h >> np.uint64(11)) >= np.uint64(round(p * 2.0 ** 53))).astype(np.float64)


def test_the_masks_are_the_numpy_twins_and_keep_one_minus_p_of_the_units():
    rows = np.arange(1000, 1300, dtype=np.int64)
    a = np.ones((300, 256))
    out = np.empty_like(a)
    key = np.uint64(kernels.dropout_key(7, 12, 1))
    kernels.dropout_forward(out, a, rows, np.int64(0), key, kernels.dropout_threshold(0.3), 1 / 0.7)
    mask = twin_mask(7, 12, 1, rows, 256, 0.3)
    np.testing.assert_array_equal(out, mask / 0.7)
    assert abs(mask.mean() - 0.7) < 0.01
    other = twin_mask(7, 13, 1, rows, 256, 0.3)  # the next step draws other masks
    assert 0.35 < (mask != other).mean() < 0.5


def model(activation="tanh", sizes=(5, 7, 6, 3)):
    m = MLP(list(sizes), activation=activation, dtype="float64", seed=1)
    m.dropout, m.dropout_seed, m.dropout_step = [0.3, 0.5], 4, 11
    return m


def data(n=9):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_the_gradient_is_the_masked_losss_finite_differences(activation):
    # 6 → 3 is narrow: the layer above a dropped one takes the BLAS path, with the mask between it and σ'
    X, y = data()
    m, rows = model(activation), np.arange(20, 29, dtype=np.int64)
    grad = np.zeros(m.n_params)
    m.loss_and_grad_into(X, y, grad, rows=rows)
    numeric, e = np.zeros(m.n_params), 1e-6
    for i in range(m.n_params):
        m.flat_params[i] += e
        up = m.loss_and_grad_into(X, y, np.zeros(m.n_params), rows=rows)
        m.flat_params[i] -= 2 * e
        down = m.loss_and_grad_into(X, y, np.zeros(m.n_params), rows=rows)
        m.flat_params[i] += e
        numeric[i] = (up - down) / (2 * e)
    np.testing.assert_allclose(grad, numeric, atol=1e-7)


def test_relu_backpropagates_through_the_masks_as_a_numpy_reference_does():
    # (relu's kink makes finite differences unreliable where a dropped row leaves z = b exactly)
    X, y = data()
    m, rows = model("relu"), np.arange(20, 29, dtype=np.int64)
    grad = np.zeros(m.n_params)
    m.loss_and_grad_into(X, y, grad, rows=rows)
    (W0, b0), (W1, b1), (W2, b2) = m.params
    m0, m1 = twin_mask(4, 11, 0, rows, 7, 0.3) / 0.7, twin_mask(4, 11, 1, rows, 6, 0.5) / 0.5
    a0 = np.maximum(X @ W0 + b0, 0)
    a1 = np.maximum((a0 * m0) @ W1 + b1, 0)
    z2 = (a1 * m1) @ W2 + b2
    p = np.exp(z2 - z2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d2 = p
    d2[np.arange(len(y)), y] -= 1
    d1 = (a1 > 0) * (d2 @ W2.T) * m1
    d0 = (a0 > 0) * (d1 @ W1.T) * m0
    want = [(X.T @ d0, d0.sum(0)), ((a0 * m0).T @ d1, d1.sum(0)), ((a1 * m1).T @ d2, d2.sum(0))]
    for (dW, db), (W_ref, b_ref) in zip(m.views(grad), want):
        np.testing.assert_allclose(dW, W_ref, atol=1e-12)
        np.testing.assert_allclose(db, b_ref, atol=1e-12)


def test_evaluation_and_prediction_use_no_mask():
    X, y = data()
    plain, dropped = MLP([5, 7, 6, 3], activation="tanh", dtype="float64", seed=1), model()
    assert dropped.loss_into(X, y) == plain.loss_into(X, y)
    np.testing.assert_array_equal(dropped.predict(X), plain.predict(X))
    assert dropped.loss_and_grad_into(X, y, np.zeros(plain.n_params)) == plain.loss_into(X, y)  # no rows: no mask


FIT = dict(epochs=2, batch_size=12, optimizer="adam", lr=0.01, seed=3, scale="none", timeout=0, comm=SerialComm(),
           verbose=False, dropout=[0.25, 0.1])


def rows60():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((60, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def net():
    return distbp.MLP([5, 16, 8, 3], activation="relu", dtype="float64", seed=2)


def test_accumulation_and_the_exact_mode_see_the_same_masks():
    X, y = rows60()
    plain, accumulated, exact, none = net(), net(), net(), net()
    distbp.fit(plain, X, y, **FIT)
    distbp.fit(accumulated, X, y, accumulate=3, **FIT)
    distbp.fit(exact, X, y, reproducible=True, micro_batch=4, **FIT)
    distbp.fit(none, X, y, **{**FIT, "dropout": None})
    np.testing.assert_allclose(accumulated.flat_params, plain.flat_params, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(exact.flat_params, plain.flat_params, rtol=1e-9, atol=1e-11)
    assert np.abs(none.flat_params - plain.flat_params).max() > 1e-4  # the masks did drop units


def test_a_run_with_dropout_resumes_mid_epoch_bit_exactly(tmp_path):
    X, y = rows60()
    whole, first, resumed = net(), net(), net()
    distbp.fit(whole, X, y, **FIT)
    distbp.fit(first, X, y, checkpoint_dir=str(tmp_path), callback_every=1,
               callback=lambda r: r.get("step") == 7, **FIT)
    ran = []
    distbp.fit(resumed, X, y, checkpoint_dir=str(tmp_path), resume=True, callback_every=1,
               callback=lambda r: ran.append(r.get("step")), **FIT)
    assert ran[0] == 8 and resumed.flat_params.tobytes() == whole.flat_params.tobytes()


def test_dropout_needs_probabilities_one_or_one_per_hidden_layer():
    X, y = rows60()
    with pytest.raises(ConfigError, match="dropout must be probabilities in"):
        distbp.fit(net(), X, y, **{**FIT, "dropout": [1.0]})
    with pytest.raises(distbp.DistbpError, match=r"gives 3 probabilities for 2 hidden layer\(s\)"):
        distbp.fit(net(), X, y, **{**FIT, "dropout": [0.1, 0.2, 0.3]})


def test_the_estimators_take_dropout():
    pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")
    from distbp.sklearn import MLPClassifier

    X, y = rows60()
    params = dict(hidden_layer_sizes=(16,), max_iter=3, random_state=0, dtype="float64")
    with pytest.warns(Warning):
        dropped = MLPClassifier(dropout=0.3, **params).fit(X, y)
        plain = MLPClassifier(**params).fit(X, y)
    assert np.abs(dropped.coefs_[0] - plain.coefs_[0]).max() > 1e-6
    with pytest.raises(ValueError, match="dropout must be None, a probability"):
        MLPClassifier(dropout=1.5, **params).fit(X, y)


@pytest.mark.parametrize("flags", [dict(), dict(reproducible=True, micro_batch=8), dict(accumulate=2)],
                         ids=["plain", "exact", "accumulate"])
def test_the_memory_estimate_counts_the_masked_activations(flags):
    from distbp.config import Config, validate
    from distbp.train import loop, memory
    from distbp.train.setup import setup
    from tests.helpers import memcheck

    cfg = validate(Config(data="synthetic:rows=230,features=10,classes=3,test=30", layers=[10, 12, 7, 3], epochs=1,
                          batch_size=40, lr=0.01, progress="none", timeout=0, dropout=[0.2], **flags))
    r = setup(cfg, SerialComm())
    loop.fit(r)
    r.watchdog.stop()
    assert memory.per_rank(r.sync)["total"] == memcheck.allocated_bytes(r, skip=(r.data, r.comm))
