"""Regression and multilabel models from the command line, one process (issue 28): training reports the held-out
RMSE and R² (regression) or per-label and subset accuracy (multilabel) in its lines and metrics; `distbp
evaluate` gives scikit-learn's numbers on `distbp predict`'s outputs; `predict --labels` writes class names,
0/1 labels or the 0/1 matrix; `evaluate` reads class names through the model's classes; `distbp plot` draws
regression runs, alone and beside a classifier."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, hamming_loss, mean_squared_error, r2_score

from distbp.nn.model import MLP
from tests.unit.test_predict import assert_one_error_line, cli

pytestmark = pytest.mark.timeout(180)

QUICK = ["--batch-size", "40", "--lr", "0.05", "--lr-scale", "mean", "--progress", "none", "--dtype", "float64"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def epoch_line(stdout: str, epoch: int) -> str:
    """The summary line of an epoch in a training's output."""
    return next(line for line in stdout.splitlines() if line.startswith(f"epoch {epoch:3d}  loss "))


def evaluate_json(d, *extra: str) -> dict:
    done = cli(["evaluate", "--model", "m.npz", "--data", "data.npz", "--json", *extra], d)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def predict(d, *extra: str, output: str = "P.npy") -> np.ndarray | None:
    """`distbp predict` on X_test.npy into `output`; what an .npy output holds."""
    done = cli(["predict", "--model", "m.npz", "--data", "X_test.npy", "--output", output, *extra], d)
    assert done.returncode == 0, done.stderr
    return np.load(d / output) if output.endswith(".npy") else None


# ---- regression: three float targets in their own units -----------------------------------------------

@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    """A 4-16-3 mse model trained 30 epochs on y = XA·40 + (200, −5, 1e3) + noise with standardized targets:
    the folder (data.npz, X_test.npy, m.npz, m.jsonl) and the training's stdout."""
    d = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 4))
    y = np.tanh(X @ rng.normal(size=(4, 3))) * 40 + [200.0, -5.0, 1e3] + rng.normal(0, 4, (400, 3))
    np.savez(d / "data.npz", X=X[:320], y=y[:320], X_test=X[320:], y_test=y[320:])
    np.save(d / "X_test.npy", X[320:])
    done = cli(["train", "--data", "data.npz", "--layers", "4,16,3", "--loss", "mse", "--scale-targets",
                "standardize", *QUICK, "--epochs", "30", "--save", "m.npz", "--metrics", "m.jsonl"], d)
    assert done.returncode == 0, done.stderr
    return d, y[320:], done.stdout


def test_training_reports_held_out_rmse_and_r2_in_its_lines_and_metrics(regression):
    d, _, stdout = regression
    last = records(d / "m.jsonl")[-1]
    assert last["train_accuracy"] is None and last["test_accuracy"] is None
    assert last["test_rmse"] > 0 and 0.8 < last["test_r2"] < 1, last  # learnt, in the targets' units
    assert "test_subset_accuracy" not in last
    line = epoch_line(stdout, 30)
    assert f"test loss {last['test_loss']:.4f}  rmse {last['test_rmse']:.4g}  R² {last['test_r2']:.4f}" in line
    assert "test   -" not in stdout


def test_evaluate_gives_scikit_learns_r2_and_rmse_on_predicts_outputs(regression):
    d, y_test, _ = regression
    report = evaluate_json(d)
    P = predict(d)  # in the targets' own units
    assert abs(P.mean(axis=0) - y_test.mean(axis=0)).max() < 20  # not standardized units
    assert report["accuracy"] is None and "subset_accuracy" not in report
    assert report["r2"] == pytest.approx(r2_score(y_test, P), abs=1e-6)
    assert report["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y_test, P)), rel=1e-6)
    last = records(d / "m.jsonl")[-1]  # the training's own evaluation of the same rows
    assert (report["rmse"], report["r2"], report["loss"]) == pytest.approx(
        (last["test_rmse"], last["test_r2"], last["test_loss"]), rel=1e-9)


def test_evaluate_prints_rmse_and_r2_in_its_text(regression):
    d = regression[0]
    done = cli(["evaluate", "--model", "m.npz", "--data", "data.npz"], d)
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("loss ") and "rmse " in last and "R² " in last and "accuracy" not in last


def test_predict_labels_of_a_regression_is_one_error(regression):
    done = cli(["predict", "--model", "m.npz", "--data", "X_test.npy", "--output", "L.csv", "--labels"],
               regression[0])
    assert_one_error_line(done, "--labels needs a classifier", "a regression")


# ---- multilabel: three yes/no labels per row ----------------------------------------------------------

@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    """A 6-24-3 σ/binary cross-entropy model trained on 0/1 int labels (n, 3), each a side of a hyperplane."""
    d = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 6))
    y = (X @ rng.normal(size=(6, 3)) > 0).astype(np.int64)
    np.savez(d / "data.npz", X=X[:480], y=y[:480], X_test=X[480:], y_test=y[480:])
    np.save(d / "X_test.npy", X[480:])
    done = cli(["train", "--data", "data.npz", "--layers", "6,24,3", "--loss", "binary_cross_entropy",
                *QUICK, "--epochs", "15", "--save", "m.npz", "--metrics", "m.jsonl"], d)
    assert done.returncode == 0, done.stderr
    return d, y[480:], done.stdout


def test_multilabel_training_reports_per_label_and_subset_accuracy(multilabel):
    d, _, stdout = multilabel
    last = records(d / "m.jsonl")[-1]
    assert 0.85 < last["train_accuracy"] <= 1 and 0.85 < last["test_accuracy"] <= 1, last
    assert 0 < last["test_subset_accuracy"] <= last["test_accuracy"], last
    assert "test_r2" not in last
    assert f"subset {100 * last['test_subset_accuracy']:5.1f}%" in epoch_line(stdout, 15)


def test_evaluate_gives_scikit_learns_hamming_and_subset_accuracy(multilabel):
    d, y_test, _ = multilabel
    report = evaluate_json(d)
    P = predict(d)
    predicted = (P > 0.5).astype(int)
    assert report["accuracy"] == pytest.approx(1 - hamming_loss(y_test, predicted), abs=1e-12)
    assert report["subset_accuracy"] == pytest.approx(accuracy_score(y_test, predicted), abs=1e-12)
    last = records(d / "m.jsonl")[-1]  # the training's own evaluation, in chunks of its own
    assert (report["accuracy"], report["subset_accuracy"]) == pytest.approx(
        (last["test_accuracy"], last["test_subset_accuracy"]), abs=1e-12)


def test_predict_labels_of_a_multilabel_model_is_the_0_1_matrix(multilabel):
    d = multilabel[0]
    P = predict(d)
    labels = predict(d, "--labels", output="L.npy")
    assert labels.dtype.kind == "i" and labels.shape == P.shape
    np.testing.assert_array_equal(labels, (P > 0.5).astype(int))
    predict(d, "--labels", output="L.csv")
    np.testing.assert_array_equal(np.loadtxt(d / "L.csv", delimiter=",", dtype=int), labels)


# ---- class names ---------------------------------------------------------------------------------------

def test_predict_labels_of_a_binary_model_with_one_output_are_its_two_classes(tmp_path):
    model = MLP([4, 5, 1], loss="binary_cross_entropy", seed=3)
    X = np.random.default_rng(2).normal(size=(60, 4)) * 3
    np.save(tmp_path / "X_test.npy", X)
    p = model.predict(X)[:, 0]
    assert 0 < (p > 0.5).sum() < len(p)  # both classes occur
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(predict(tmp_path, "--labels", output="L.npy"), (p > 0.5).astype(int))
    model.classes = np.array(["ham", "spam"])
    model.save(tmp_path / "m.npz")
    predict(tmp_path, "--labels", output="L.csv")
    assert (tmp_path / "L.csv").read_text().split() == list(np.where(p > 0.5, "spam", "ham"))


def test_evaluate_reads_class_names_through_the_models_classes(tmp_path):
    model = MLP([4, 6, 3], seed=5)
    model.classes = np.array(["cat", "dog", "emu"])
    model.save(tmp_path / "m.npz")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(90, 4)) * 2
    names = model.classes[np.argmax(model.predict(X) + rng.normal(0, 0.1, (90, 3)), axis=1)]  # mostly right
    np.savez(tmp_path / "data.npz", X=X, y=names)
    report = evaluate_json(tmp_path)
    predicted = model.classes[np.argmax(model.predict(X), axis=1)]
    assert report["rows"] == 90 and report["accuracy"] == pytest.approx(np.mean(predicted == names), abs=1e-12)
    assert 0.5 < report["accuracy"] < 1


# ---- distbp plot ---------------------------------------------------------------------------------------

def test_plot_draws_a_regression_run_and_a_regression_beside_a_classifier(regression, tmp_path):
    d = regression[0]
    classifier = tmp_path / "classifier.jsonl"
    classifier.write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10,
                                              "test_loss": 1.2 / e, "test_accuracy": 0.4 + e / 10}) + "\n"
                                  for e in range(1, 5)))
    for files, out in (([d / "m.jsonl"], "regression.png"), ([classifier, d / "m.jsonl"], "mixed.png")):
        done = cli(["plot", *map(str, files), "-o", str(tmp_path / out)], tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / out).read_bytes().startswith(PNG_SIGNATURE)
