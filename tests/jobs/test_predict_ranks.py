"""Saved models under MPI (launch/local, plain pytest): `distbp evaluate` on 2 ranks, each a contiguous share of
the rows, gives one rank's loss and accuracy; `distbp predict` on 2 ranks writes the root's output and ends;
a bad model file is reported once, exit code 2, no rank left waiting."""

import json

import numpy as np
import pytest
from jobs import run_job

from distbp.nn.model import MLP

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def model_and_data(tmp_path):
    """A scaled 8-10-3 model (no training needed) and data.npz with a 101-row test split (odd: uneven shares)."""
    rng = np.random.default_rng(3)
    model = MLP([8, 10, 3], activation="tanh", seed=4)
    model.feature_offset, model.feature_factor = rng.normal(3, 1, 8), 1 / rng.uniform(1, 2, 8)
    model.save(tmp_path / "m.npz")
    X = rng.normal(3, 1.5, (181, 8)).astype(np.float32)
    y = rng.integers(0, 3, 181)
    np.savez(tmp_path / "data.npz", X=X[:80], y=y[:80], X_test=X[80:], y_test=y[80:])
    return tmp_path, model, X[80:], y[80:]


def test_two_ranks_evaluate_like_one_rank_and_like_the_model(model_and_data):
    d, model, X_test, y_test = model_and_data
    args = ["distbp", "evaluate", "--model", str(d / "m.npz"), "--data", str(d / "data.npz"), "--json"]
    reports = {}
    for ranks in (1, 2):
        done = run_job(ranks, args, timeout=90)
        assert done.returncode == 0, done.output
        assert len(done.stdout.splitlines()) == 1, done.output  # the root alone prints
        reports[ranks] = json.loads(done.stdout)
    assert reports[2]["ranks"] == 2 and reports[2]["rows"] == 101 and reports[2]["split"] == "test"
    assert reports[2]["accuracy"] == reports[1]["accuracy"]
    assert reports[2]["loss"] == pytest.approx(reports[1]["loss"], rel=1e-6)
    P = model.predict(X_test).astype(np.float64)
    assert reports[2]["accuracy"] == pytest.approx(np.mean(P.argmax(axis=1) == y_test), abs=1e-12)
    assert reports[2]["loss"] == pytest.approx(-np.mean(np.log(P[np.arange(len(y_test)), y_test])), rel=1e-5)


def test_predict_on_two_ranks_writes_the_roots_output_and_ends(model_and_data):
    d, model, X_test, _ = model_and_data
    np.save(d / "X.npy", X_test)
    done = run_job(2, ["distbp", "predict", "--model", str(d / "m.npz"), "--data", str(d / "X.npy"),
                       "--output", str(d / "P.npy")], timeout=60)
    assert done.returncode == 0, done.output
    assert done.stdout.count("wrote the probabilities") == 1, done.output
    assert np.load(d / "P.npy").tobytes() == model.predict(X_test).tobytes()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_two_ranks_report_a_bad_model_file_once_and_exit_2(model_and_data, command):
    d = model_and_data[0]
    (d / "bad.npz").write_bytes((d / "m.npz").read_bytes()[:200])
    args = ["--output", str(d / "P.npy")] if command == "predict" else []
    done = run_job(2, ["distbp", command, "--model", str(d / "bad.npz"), "--data", str(d / "data.npz"), *args],
                   timeout=60)
    assert done.returncode == 2, done.output
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1 and "truncated or corrupt" in errors[0], done.output
