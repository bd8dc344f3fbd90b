"""The output layer as the seed writes it: y = σ(z) chosen apart from the loss, δ = σ'(z) ⊙ ∂l/∂y.

Every pair (softmax + cross-entropy, σ + binary cross-entropy, mse on every output activation) matches a plain
numpy chain rule (tests/helpers/reference.py, never fused) and central finite differences in float64; the
fused pairs stay finite for any logit; pairs that make no sense are refused before anything is built; model
files keep the output activation and the targets' scaling; today's pairs stay the defaults.
"""


import numpy as np
import pytest
from tests.helpers import reference

from distbp.config import Config, validate
from distbp.errors import ConfigError, ModelFileError
from distbp.nn import kernels
from distbp.nn.model import MLP, load_model
from distbp.nn.modelfile import initial_parameters
from distbp.nn.outputs import ALLOWED_OUTPUT, DEFAULT_OUTPUT

SIZES = [5, 8, 6, 3]
PAIRS = [(loss, act) for loss, acts in ALLOWED_OUTPUT.items() for act in acts]


def targets(loss: str, n: int, k: int = SIZES[-1], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if loss == "cross_entropy":
        return rng.integers(0, k, n)
    if loss == "binary_cross_entropy":
        return (rng.random((n, k)) < 0.4).astype(np.float64)
    return rng.standard_normal((n, k)) * 0.5 + 0.3


def problem(loss: str, n: int = 11, k: int = SIZES[-1], seed: int = 0):
    X = np.random.default_rng(seed + 100).standard_normal((n, SIZES[0]))
    return X, targets(loss, n, k, seed)


def flat(grads):
    return np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in grads])


def test_every_loss_names_the_output_activations_it_takes_and_today_s_pairs_are_the_defaults():
    assert set(PAIRS) == {("cross_entropy", "softmax"), ("binary_cross_entropy", "sigmoid")} | {
        ("mse", a) for a in ("linear", "sigmoid", "tanh", "relu", "softmax")}
    for loss, default in DEFAULT_OUTPUT.items():
        assert MLP(SIZES, loss=loss).loss.output_activation == default
    assert MLP(SIZES, loss="mse").loss.output_activation == "linear"
    assert MLP(SIZES).loss.output_activation == "softmax"


@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_matches_the_numpy_chain_rule_in_float64(loss, output_activation):
    model = MLP(SIZES, activation="tanh", loss=loss, dtype="float64", seed=4, output_activation=output_activation)
    X, y = problem(loss, n=17)
    L, grads = model.loss_and_grad(X, y)
    params = [(W.copy(), b.copy()) for W, b in model.params]
    L_ref, grads_ref = reference.loss_and_grad(params, ["tanh"] * 2, loss, X, y, output_activation)
    assert L == pytest.approx(L_ref, rel=1e-12, abs=1e-12)
    for (dW, db), (rW, rb) in zip(grads, grads_ref):
        np.testing.assert_allclose(dW, rW, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, rb, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_gradients_equal_central_finite_differences(loss, output_activation):
    model = MLP(SIZES, activation="sigmoid", loss=loss, dtype="float64", seed=3, output_activation=output_activation)
    X, y = problem(loss, seed=2)
    if output_activation == "relu":
        model.params[-1][1][...] = 0.3  # keep every output away from relu's kink at 0 on this seed
    analytic = flat(model.loss_and_grad(X, y)[1])
    theta, numeric, h = model.flat_params, np.empty(model.n_params), 1e-6
    for i in range(theta.size):
        old = theta[i]
        theta[i] = old + h
        lp = model.loss_and_grad(X, y)[0]
        theta[i] = old - h
        lm = model.loss_and_grad(X, y)[0]
        theta[i] = old
        numeric[i] = (lp - lm) / (2 * h)
    assert np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic + numeric) < 1e-6


@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_float32_matches_float64_to_float32_tolerance(loss, output_activation):
    X, y = problem(loss, n=9)
    runs = []
    for dtype in ("float32", "float64"):
        model = MLP(SIZES, activation="relu", loss=loss, dtype=dtype, seed=5, output_activation=output_activation)
        L, grads = model.loss_and_grad(X.astype(dtype), y if loss == "cross_entropy" else y.astype(dtype))
        runs.append((L, flat(grads), model.predict(X)))
    (L32, g32, p32), (L64, g64, p64) = runs
    assert L32 == pytest.approx(L64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)


def test_binary_cross_entropy_is_one_output_layer_for_a_binary_classifier():
    model = MLP([5, 4, 1], activation="tanh", loss="binary_cross_entropy", dtype="float64", seed=1)
    X, y = problem("binary_cross_entropy", n=13, k=1)
    L, grads = model.loss_and_grad(X, y)
    L_ref, _ = reference.loss_and_grad([(W.copy(), b.copy()) for W, b in model.params], ["tanh"],
                                       "binary_cross_entropy", X, y)
    assert L == pytest.approx(L_ref, rel=1e-12)
    p = model.predict(X)
    assert p.shape == (13, 1) and ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_stays_finite_and_exact_for_huge_logits(dtype):
    """softplus(z) − y·z: a confident right answer costs ~0, a confident wrong one costs |z|; nothing overflows."""
    model = MLP([2, 2], loss="binary_cross_entropy", dtype=dtype, seed=0, output_activation="sigmoid")
    W, b = model.params[0]
    W[...] = np.diag([1.0, 1.0])
    X = np.array([[300.0, -300.0], [-95.0, 95.0]], dtype)  # logits far past exp's float32 range
    y = np.array([[1.0, 0.0], [1.0, 0.0]], dtype)
    L, grads = model.loss_and_grad(X, y)
    assert np.isfinite(L) and all(np.isfinite(g).all() for pair in grads for g in pair)
    assert L == pytest.approx(95.0 + 95.0, rel=1e-6)  # row 0 right (≈ 0), row 1 wrong by 95 on both outputs
    np.testing.assert_allclose(model.predict(X), [[1.0, 0.0], [0.0, 1.0]], atol=1e-30)


@pytest.mark.parametrize("loss,output_activation,words", [
    ("binary_cross_entropy", "tanh", ["binary_cross_entropy", "tanh", "sigmoid", "mse"]),
    ("cross_entropy", "sigmoid", ["cross_entropy", "sigmoid", "softmax", "binary_cross_entropy or mse"]),
    ("cross_entropy", "linear", ["cross_entropy", "linear", "mse"]),
    ("mse", "gelu", ["unknown output activation", "gelu"]),
    ("hinge", None, ["unknown loss", "hinge"]),
])
def test_pairs_that_make_no_sense_are_refused_with_one_clear_error(loss, output_activation, words):
    with pytest.raises(ValueError) as caught:
        MLP(SIZES, loss=loss, output_activation=output_activation)
    for word in words:
        assert word in str(caught.value)


def test_the_configuration_refuses_a_pair_before_anything_is_built():
    with pytest.raises(ConfigError, match="--output-activation tanh.*binary_cross_entropy cannot follow a tanh"):
        validate(Config(loss="binary_cross_entropy", output_activation="tanh"))
    with pytest.raises(ConfigError, match="--scale-targets standardize.*--loss mse"):
        validate(Config(loss="cross_entropy", scale_targets="standardize"))
    validate(Config(loss="mse", output_activation="sigmoid", scale_targets="standardize"))


def test_one_activation_too_many_points_at_the_output_activation():
    with pytest.raises(ConfigError, match="--output-activation sigmoid"):
        validate(Config(layers=[4, 30, 3], activation="sigmoid,sigmoid", loss="mse"))


@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_model_files_keep_the_output_layer(tmp_path, loss, output_activation):
    model = MLP(SIZES, activation="relu", loss=loss, dtype="float64", seed=8, output_activation=output_activation)
    path = tmp_path / "m.npz"
    model.save(path)
    back = load_model(path)
    assert (back.loss.name, back.loss.output_activation) == (loss, output_activation)
    X = problem(loss)[0]
    assert back.predict(X).tobytes() == model.predict(X).tobytes()


def test_a_file_of_another_output_layer_cannot_start_a_model(tmp_path):
    MLP(SIZES, loss="mse", output_activation="sigmoid", seed=1).save(tmp_path / "sigmoid.npz")
    with pytest.raises(ModelFileError, match="output layer is sigmoid, the model's is linear"):
        initial_parameters(tmp_path / "sigmoid.npz", MLP(SIZES, loss="mse"))


def test_predictions_come_back_in_the_targets_units_and_files_keep_the_scaling(tmp_path):
    model = MLP([5, 4, 2], loss="mse", dtype="float64", seed=2)
    X = problem("mse")[0]
    scaled = model.predict(X)
    model.target_offset, model.target_factor = np.array([100.0, -3.0]), np.array([0.5, 4.0])
    np.testing.assert_allclose(model.predict(X), scaled / [0.5, 4.0] + [100.0, -3.0], rtol=1e-14)
    model.save(tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.target_factor, [0.5, 4.0])
    assert back.predict(X).tobytes() == model.predict(X).tobytes()


def test_a_model_file_with_a_zero_target_factor_is_refused(tmp_path):
    model = MLP([3, 2], loss="mse", seed=2)
    model.target_offset, model.target_factor = np.zeros(2), np.array([1.0, 0.0])
    model.save(tmp_path / "m.npz")
    with pytest.raises(ModelFileError, match="target_factor holds a 0"):
        load_model(tmp_path / "m.npz")


def test_a_binary_classifier_s_one_output_names_two_classes_in_its_file(tmp_path):
    model = MLP([3, 1], loss="binary_cross_entropy", seed=2)
    model.classes = np.array(["ham", "spam"])
    model.save(tmp_path / "m.npz")
    assert load_model(tmp_path / "m.npz").classes.tolist() == ["ham", "spam"]
    model.classes = np.array(["spam"])
    with pytest.raises(ValueError, match="names two classes"):
        model.save(tmp_path / "bad.npz")


def test_multilabel_counts_are_the_hamming_and_subset_numerators():
    rng = np.random.default_rng(3)
    out, y, w = rng.random((40, 4)), (rng.random((40, 4)) < 0.5).astype(np.float64), rng.random(40)
    same = (out > 0.5) == (y > 0.5)
    hamming, subset = kernels.multilabel_correct(out, y, None)
    assert hamming == pytest.approx(same.mean(axis=1).sum(), rel=1e-12)
    assert subset == same.all(axis=1).sum()
    hamming, subset = kernels.multilabel_correct(out, y, w)
    assert hamming == pytest.approx((w * same.mean(axis=1)).sum(), rel=1e-12)
    assert subset == pytest.approx(w[same.all(axis=1)].sum(), rel=1e-12)


@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_evaluation_s_loss_equals_training_s(loss, output_activation):
    model = MLP(SIZES, activation="tanh", loss=loss, dtype="float64", seed=9, output_activation=output_activation)
    X, y = problem(loss, n=10)
    assert model.loss_into(X, y) == model.loss_and_grad(X, y)[0]
