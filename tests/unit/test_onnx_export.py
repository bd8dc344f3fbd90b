"""ONNX export, with ONNX Runtime as the real client: the graph of every hidden activation and every output pair,
float32 and float64, with and without the training's scaling, gives model.predict's outputs (within 1e-5 relative
in float32, 1e-12 in float64) and its labels exactly; onnx.checker passes; inputs, outputs and opset are as
docs/deploy.md says; a model trained on 2 ranks gives `distbp predict`'s outputs; bad input is one clear error."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from jobs import REPO, run_job

from distbp.comm.serial import SerialComm
from distbp.errors import DistbpError
from distbp.export import DEFAULT_OPSET, MIN_OPSET, export_main, export_onnx, model_to_onnx
from distbp.nn.model import MLP

pytestmark = pytest.mark.timeout(180)

INPUTS, HIDDEN = 6, [9, 7]
RTOL = {"float32": 1e-5, "float64": 1e-12}
OUTPUT_PAIRS = [("cross_entropy", "softmax", 4), ("binary_cross_entropy", "sigmoid", 1),
                ("binary_cross_entropy", "sigmoid", 3), ("mse", "linear", 2), ("mse", "sigmoid", 2),
                ("mse", "tanh", 2), ("mse", "relu", 2), ("mse", "softmax", 3)]


def onnx_outputs(proto, X: np.ndarray) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs for the rows X, by output name."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"X": X})))


def assert_close(got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    """Equal within RTOL[dtype] relative to each value; values far below the largest (a linear output crossing 0)
    are held to RTOL[dtype] of the largest instead: their absolute error comes from the same sums."""
    assert got.dtype == want.dtype and got.shape == want.shape
    rtol = RTOL[dtype]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()))


def expected_labels(model: MLP, P: np.ndarray) -> np.ndarray:
    """The labels `distbp predict --labels` gives for model.predict's outputs P."""
    if model.loss.name == "cross_entropy":
        index = np.argmax(P, axis=1)
    elif model.sizes[-1] > 1:
        return (P > 0.5).astype(np.int64)
    else:
        index = (P[:, 0] > 0.5).astype(np.int64)
    return index if model.classes is None else model.classes[index]


def make_model(activation, loss, out_act, k, dtype, scaled: bool, classes=None, seed=0) -> MLP:
    """A model with random parameters; scaled: feature scaling (and target scaling for mse) as training sets it."""
    model = MLP([INPUTS, *HIDDEN, k], activation, loss, dtype, seed=seed, output_activation=out_act)
    rng = np.random.default_rng(seed + 1)
    model.flat_params[:] = rng.normal(0, 0.8, model.n_params)  # beyond the initialisation's small weights
    if scaled:
        model.feature_offset = rng.normal(3.0, 2.0, INPUTS)
        model.feature_factor = rng.uniform(0.2, 2.0, INPUTS)
        if loss == "mse":
            model.target_offset = rng.normal(10.0, 5.0, k)
            model.target_factor = rng.uniform(0.01, 0.5, k)
    model.classes = classes
    return model


def raw_rows(n: int, dtype: str, seed: int = 7) -> np.ndarray:
    """Rows far from standardized (feature scaling matters), in the model's dtype."""
    return np.random.default_rng(seed).normal(3.0, 4.0, (n, INPUTS)).astype(dtype)


# ---- every activation and output pair equals model.predict ------------------------------------------

@pytest.mark.parametrize("scaled", [False, True], ids=["raw", "scaled"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss,out_act,k", OUTPUT_PAIRS, ids=[f"{l}-{a}-{k}" for l, a, k in OUTPUT_PAIRS])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "linear"])
def test_onnx_runtime_equals_model_predict(activation, loss, out_act, k, dtype, scaled):
    model = make_model(activation, loss, out_act, k, dtype, scaled)
    proto = model_to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    X = raw_rows(64, dtype)
    got, want = onnx_outputs(proto, X), model.predict(X)
    if loss == "mse":
        assert list(got) == ["values"]
        assert_close(got["values"], want, dtype)
    else:
        assert list(got) == ["probabilities", "label"]
        assert_close(got["probabilities"], want, dtype)
        assert got["label"].dtype == np.int64
        assert np.array_equal(got["label"], expected_labels(model, want))


def test_hidden_layers_of_different_activations_export_each_their_own():
    model = MLP([INPUTS, 8, 8, 8, 3], ["relu", "tanh", "sigmoid"], "cross_entropy", "float64", seed=3)
    X = raw_rows(20, "float64")
    assert_close(onnx_outputs(model_to_onnx(model), X)["probabilities"], model.predict(X), "float64")
    ops = [n.op_type for n in model_to_onnx(model).graph.node]
    assert ops == ["MatMul", "Add", "Relu", "MatMul", "Add", "Tanh", "MatMul", "Add", "Sigmoid",
                   "MatMul", "Add", "Softmax", "ArgMax"]


# ---- labels through the model's classes ---------------------------------------------------------------

CLASSES = {"ints": np.array([3, 7, 11, 20]), "strings": np.array(["ant", "bee", "cat", "dog"]),
           "floats": np.array([0.5, 1.5, 2.5, 4.0]), "objects": np.array(["ant", "bee", "cat", "dog"], object)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(CLASSES))
def test_classifier_label_is_the_class_of_the_largest_probability(kind, dtype):
    model = make_model("tanh", "cross_entropy", None, 4, dtype, True, classes=CLASSES[kind])
    proto = model_to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    X = raw_rows(80, dtype)
    got, P = onnx_outputs(proto, X), model.predict(X)
    want = expected_labels(model, P)
    assert len(set(want.tolist())) > 1  # more than one class comes out: the gather is exercised
    assert np.array_equal(got["label"], want)
    assert {"ints": np.int64, "strings": object, "floats": np.float64, "objects": object}[kind] == got["label"].dtype


@pytest.mark.parametrize("kind", ["ints", "strings"])
def test_binary_classifier_with_one_output_labels_p_above_half_with_the_second_class(kind):
    classes = CLASSES[kind][:2]
    model = make_model("relu", "binary_cross_entropy", None, 1, "float32", True, classes=classes)
    X = raw_rows(200, "float32")
    z = np.log(model.predict(X)) - np.log1p(-model.predict(X))
    model.params[-1][1][:] -= np.median(z)  # the output bias that puts half the rows on each side of ½
    got, P = onnx_outputs(model_to_onnx(model), X), model.predict(X)
    assert 0 < (P[:, 0] > 0.5).sum() < len(X)  # both classes come out
    assert np.array_equal(got["label"], classes[(P[:, 0] > 0.5).astype(int)])
    assert got["label"].shape == (200,)


def test_multilabel_label_is_the_0_1_matrix_of_p_above_half():
    model = make_model("sigmoid", "binary_cross_entropy", None, 3, "float64", False, classes=np.array([0, 1, 2]))
    X = raw_rows(50, "float64")
    got, P = onnx_outputs(model_to_onnx(model), X), model.predict(X)
    assert got["label"].dtype == np.int64 and got["label"].shape == (50, 3)
    assert np.array_equal(got["label"], (P > 0.5).astype(np.int64))


# ---- the graph's interface ----------------------------------------------------------------------------

def test_the_graph_has_input_X_outputs_by_loss_one_dynamic_batch_dimension_and_the_default_opset():
    classifier = make_model("relu", "cross_entropy", None, 4, "float32", True, classes=CLASSES["strings"])
    regression = make_model("tanh", "mse", None, 2, "float64", True)
    for model, outputs in ((classifier, {"probabilities": onnx.TensorProto.FLOAT, "label": onnx.TensorProto.STRING}),
                           (regression, {"values": onnx.TensorProto.DOUBLE})):
        proto = model_to_onnx(model)
        graph = proto.graph
        assert [i.name for i in graph.input] == ["X"]
        x = graph.input[0].type.tensor_type
        assert x.elem_type == (onnx.TensorProto.FLOAT if model.dtype == np.float32 else onnx.TensorProto.DOUBLE)
        assert [d.dim_param or d.dim_value for d in x.shape.dim] == ["N", INPUTS]
        assert {o.name: o.type.tensor_type.elem_type for o in graph.output} == outputs
        assert all(o.type.tensor_type.shape.dim[0].dim_param == "N" for o in graph.output)
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", DEFAULT_OPSET)]
        assert proto.producer_name == "distbp"
        props = {p.key: p.value for p in proto.metadata_props}
        assert props["sizes"] == f"{INPUTS}-9-7-{model.sizes[-1]}" and props["loss"] == model.loss.name
    X = raw_rows(1, "float32")  # one row, then many: the batch dimension is free
    assert onnx_outputs(model_to_onnx(classifier), X)["probabilities"].shape == (1, 4)


@pytest.mark.parametrize("opset", [MIN_OPSET, DEFAULT_OPSET, min(21, onnx.defs.onnx_opset_version())])
def test_each_supported_opset_runs_in_onnx_runtime(opset):
    model = make_model("sigmoid", "cross_entropy", None, 4, "float32", True)
    proto = model_to_onnx(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == opset
    X = raw_rows(10, "float32")
    assert_close(onnx_outputs(proto, X)["probabilities"], model.predict(X), "float32")


def test_export_onnx_writes_a_file_that_onnx_loads_and_checks(tmp_path):
    model = make_model("relu", "mse", "relu", 2, "float32", True)
    export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    X = raw_rows(30, "float32")
    assert_close(onnx_outputs(proto, X)["values"], model.predict(X), "float32")


# ---- what cannot be exported ------------------------------------------------------------------------------

def test_a_bad_opset_is_one_clear_error():
    model = make_model("relu", "cross_entropy", None, 4, "float32", False)
    highest = onnx.defs.onnx_opset_version()
    for opset in (MIN_OPSET - 1, highest + 1):
        with pytest.raises(ValueError, match=f"opset {opset} cannot be written: distbp exports opsets {MIN_OPSET} "
                                             f"to {highest}"):
            model_to_onnx(model, opset=opset)


def test_what_has_no_onnx_counterpart_is_one_clear_error(tmp_path):
    model = make_model("relu", "cross_entropy", None, 4, "float32", False)
    model.activation_names[1] = "swish"  # an activation distbp might add without an ONNX operator
    with pytest.raises(ValueError, match="activation 'swish' has no ONNX export"):
        model_to_onnx(model)
    model = make_model("relu", "cross_entropy", None, 4, "float32", False, classes=np.array([1, "a", 2.0, None]))
    with pytest.raises(ValueError, match="class labels of dtype object have no ONNX tensor type"):
        model_to_onnx(model)
    model = make_model("relu", "cross_entropy", None, 4, "float32", False)
    model.flat_params[5] = np.nan
    with pytest.raises(ValueError, match="parameters hold NaN or Inf"):
        model_to_onnx(model)
    with pytest.raises(ValueError, match="is a directory"):
        export_onnx(make_model("relu", "mse", None, 1, "float32", False), tmp_path)


def test_without_the_onnx_package_the_error_names_the_pip_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "distbp\[onnx\]"'):
        model_to_onnx(make_model("relu", "mse", None, 1, "float32", False))


# ---- distbp export, and a model trained on 2 ranks ----------------------------------------------------------

def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m distbp …` in one process with one thread."""
    env = dict(os.environ, DISTBP_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return subprocess.run([sys.executable, "-m", "distbp", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """digits trained for 2 epochs on 2 ranks (standardized features: the model carries its scaling), saved."""
    d = tmp_path_factory.mktemp("two_ranks")
    done = run_job(2, [sys.executable, "-m", "distbp", "train", "--data", "digits", "--layers", "64,32,10",
                       "--epochs", "2", "--save", "m.npz", "--progress", "none"], cwd=d, timeout=150)
    assert done.returncode == 0, done.output
    return d


def test_a_model_trained_on_two_ranks_exports_what_distbp_predict_gives(trained):
    from sklearn.datasets import load_digits

    np.save(trained / "X.npy", load_digits().data.astype(np.float32))
    assert export_main(["--model", str(trained / "m.npz"), "--onnx", str(trained / "m.onnx")], SerialComm()) == 0
    for args, out in ((["--output", "P.npy"], "P.npy"), (["--output", "L.npy", "--labels"], "L.npy")):
        done = cli(["predict", "--model", "m.npz", "--data", "X.npy", *args], trained)
        assert done.returncode == 0, done.stderr
    proto = onnx.load(str(trained / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    got = onnx_outputs(proto, np.load(trained / "X.npy"))
    assert_close(got["probabilities"], np.load(trained / "P.npy"), "float32")
    assert np.array_equal(got["label"], np.load(trained / "L.npy"))
    assert {p.key: p.value for p in proto.metadata_props}["feature_scaling"] == "yes"


def test_export_main_writes_the_opset_asked_for(trained):
    out = trained / "m13.onnx"
    assert export_main(["--model", str(trained / "m.npz"), "--onnx", str(out), "--opset", "13"], SerialComm()) == 0
    assert onnx.load(str(out)).opset_import[0].version == 13


@pytest.mark.parametrize("args,phrase", [
    (["--model", "missing.npz", "--onnx", "m.onnx"], "missing.npz"),
    (["--model", "m.npz", "--onnx", "."], "--onnx . is a directory"),
    (["--model", "m.npz", "--onnx", "m.onnx", "--opset", "12"], "opset 12 cannot be written"),
    (["--model", "m.npz", "--onnx", "m.onnx", "--opset", "many"], "invalid int value: 'many'"),
    (["--model", "m.npz", "--onnx", "m.npz"], "is the --model file"),
    (["--model", "m.npz"], "distbp export needs --onnx"),
], ids=["missing-model", "onnx-is-a-folder", "opset-too-old", "opset-not-a-number", "onnx-is-the-model",
        "no-onnx"])
def test_bad_input_to_distbp_export_is_one_clear_error(trained, monkeypatch, args, phrase):
    monkeypatch.chdir(trained)
    before = sorted(os.listdir(trained))
    with pytest.raises(DistbpError, match=phrase.replace(".", r"\.").replace("(", r"\(")):
        export_main(args, SerialComm())
    assert sorted(os.listdir(trained)) == before  # nothing written, the model untouched


def test_distbp_export_on_the_command_line_writes_the_graph_or_one_error_line(trained):
    done = cli(["export", "--model", "m.npz", "--onnx", "cli.onnx"], trained)
    assert done.returncode == 0, done.stderr
    assert "wrote cli.onnx" in done.stdout and (trained / "cli.onnx").exists()
    onnx.checker.check_model(onnx.load(str(trained / "cli.onnx")), full_check=True)
    done = cli(["export", "--model", "missing.npz", "--onnx", "x.onnx"], trained)
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "missing.npz" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (trained / "x.onnx").exists()


def test_the_package_offers_export_onnx():
    import distbp

    assert distbp.export_onnx is export_onnx
