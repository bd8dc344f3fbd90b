"""The skl2onnx converters of distbp.sklearn_onnx: a scikit-learn pipeline ending in distbp's MLPClassifier or
MLPRegressor converts with `skl2onnx.to_onnx(pipeline, X[:1])`, and ONNX Runtime gives its predict (labels exactly)
and predict_proba (within 1e-5 relative: the model computes in float32) with skl2onnx's usual outputs and options."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import skl2onnx
from sklearn.datasets import load_diabetes, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from distbp.comm.serial import SerialComm
from distbp.sklearn import MLPClassifier, MLPRegressor
from distbp.sklearn_onnx import register

pytestmark = pytest.mark.timeout(120)

RTOL = 1e-5  # float32 models; predict_proba renormalises its rows in float64
SPECIES = np.array(["setosa", "versicolor", "virginica"])


@pytest.fixture(scope="module", autouse=True)
def registered():
    register()


def run(proto, X: np.ndarray) -> dict:
    """ONNX Runtime's outputs for the rows X, by output name."""
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: X})))


def fitted(estimator, X, y):
    """make_pipeline(StandardScaler(), estimator) fitted on X, y (in this process alone)."""
    pipe = make_pipeline(StandardScaler(), estimator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 5 epochs: not converged, on purpose
        return pipe.fit(X, y, **{f"{pipe.steps[-1][0]}__comm": SerialComm()})


def iris(labels: str):
    """iris's rows and labels: "ints" 0, 1, 2; "strings" the species' names; "objects" the names as Python objects
    (as pandas holds them)."""
    X, y = load_iris(return_X_y=True)
    return X, {"ints": y, "strings": SPECIES[y], "objects": SPECIES[y].astype(object)}[labels]


# ---- classifier -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels", ["ints", "strings", "objects"])
def test_classifier_pipeline_equals_predict_and_predict_proba(labels):
    X, y = iris(labels)
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, y)
    got = run(skl2onnx.to_onnx(pipe, X[:1], options={MLPClassifier: {"zipmap": False}}), X)
    assert list(got) == ["label", "probabilities"]
    assert got["probabilities"].dtype == np.float64  # the pipeline's rows are float64
    np.testing.assert_allclose(got["probabilities"], pipe.predict_proba(X), rtol=RTOL)
    assert len(set(pipe.predict(X))) > 1  # more than one class comes out
    assert np.array_equal(got["label"], pipe.predict(X))


@pytest.mark.parametrize("labels", ["ints", "strings"])
def test_classifier_with_skl2onnx_default_zipmap_gives_one_dict_per_row(labels):
    X, y = iris(labels)
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, y)
    got = run(skl2onnx.to_onnx(pipe, X[:1]), X)  # float64 rows: the ZipMap takes float probabilities
    assert list(got) == ["output_label", "output_probability"]
    assert np.array_equal(got["output_label"], pipe.predict(X))
    proba = pipe.predict_proba(X)
    classes = pipe.classes_.tolist()
    assert [list(row) for row in got["output_probability"]] == [classes] * len(X)
    table = np.array([[row[c] for c in classes] for row in got["output_probability"]])
    np.testing.assert_allclose(table, proba, rtol=RTOL)


def test_classifier_options_zipmap_columns_and_nocl():
    X, y = iris("strings")
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, y)
    proba = pipe.predict_proba(X)
    columns = run(skl2onnx.to_onnx(pipe, X[:1], options={MLPClassifier: {"zipmap": "columns"}}), X)
    assert list(columns) == ["output_label", "ssetosa", "sversicolor", "svirginica"]
    np.testing.assert_allclose(np.c_[columns["ssetosa"], columns["sversicolor"], columns["svirginica"]], proba,
                               rtol=RTOL)
    nocl = run(skl2onnx.to_onnx(pipe, X[:1], options={MLPClassifier: {"zipmap": False, "nocl": True}}), X)
    assert nocl["label"].dtype == np.int64
    assert np.array_equal(nocl["label"], np.searchsorted(pipe.classes_, pipe.predict(X)))


def test_classifier_float32_rows_and_float64_model():
    X, y = iris("ints")
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype="float64"), X, y)
    got = run(skl2onnx.to_onnx(pipe, X[:1].astype(np.float32), options={MLPClassifier: {"zipmap": False}}),
              X.astype(np.float32))
    assert got["probabilities"].dtype == np.float32  # the rows' type; the network computes in float64
    # the pipeline's own float32 rows give another scaling (StandardScaler in float32): rounding, not the model
    np.testing.assert_allclose(got["probabilities"], pipe.predict_proba(X.astype(np.float32)), rtol=1e-5)


def test_multilabel_classifier_gives_the_0_1_matrix_with_zipmap_off_and_a_clear_error_with_it_on():
    X, y = load_iris(return_X_y=True)
    Y = np.c_[y == 0, y == 1, X[:, 0] > 5.8].astype(np.int64)
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, Y)
    got = run(skl2onnx.to_onnx(pipe, X[:1], options={MLPClassifier: {"zipmap": False}}), X)
    assert got["label"].shape == (len(X), 3)
    assert np.array_equal(got["label"], pipe.predict(X))
    np.testing.assert_allclose(got["probabilities"], pipe.predict_proba(X), rtol=RTOL)
    with pytest.raises(ValueError, match="multilabel y converts with the option zipmap=False only"):
        skl2onnx.to_onnx(pipe, X[:1])


def test_float_class_labels_come_out_as_int64_as_for_scikit_learns_classifiers():
    X, y = iris("ints")
    pipe = fitted(MLPClassifier(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, y * 10.0)
    got = run(skl2onnx.to_onnx(pipe, X[:1], options={MLPClassifier: {"zipmap": False}}), X)
    assert got["label"].dtype == np.int64
    assert np.array_equal(got["label"], pipe.predict(X))  # 0.0, 10.0, 20.0 as 0, 10, 20


# ---- regressor ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("targets", [1, 2])
def test_regressor_pipeline_equals_predict(targets):
    X, y = load_diabetes(return_X_y=True)
    Y = y if targets == 1 else np.c_[y, np.sqrt(y)]
    pipe = fitted(MLPRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0), X, Y)
    got = run(skl2onnx.to_onnx(pipe, X[:1]), X)
    assert list(got) == ["variable"]
    values = got["variable"]
    assert values.shape == (len(X), targets) and values.dtype == np.float64
    want = pipe.predict(X).reshape(len(X), targets)
    np.testing.assert_allclose(values, want, rtol=RTOL, atol=RTOL * np.abs(want).max())
