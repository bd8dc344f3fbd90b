"""Using saved models from the command line, one process: `distbp train --save` writes a model file that
`distbp predict` applies to raw rows exactly as `model.predict` does (the training's scaling included),
`distbp evaluate` reproduces the training's test metrics, `distbp train --init-from` starts from a file's
parameters; bad inputs are one `distbp: error:` line and exit code 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import REPO, load_npz

import distbp
from distbp.data.datasets import load_dataset
from distbp.nn.model import MLP

pytestmark = pytest.mark.timeout(120)

FEATURES, CLASSES = 20, 3
LAYERS = ["--layers", f"{FEATURES},16,{CLASSES}"]
QUICK = ["--batch-size", "50", "--lr", "0.05", "--lr-scale", "mean", "--progress", "none"]


def cli(args: list[str], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """`python -m distbp …` in one process with one thread, no mpiexec."""
    env = dict(os.environ, DISTBP_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return subprocess.run([sys.executable, "-m", "distbp", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def assert_one_error_line(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("distbp: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    for phrase in phrases:
        assert phrase in errors[0], done.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run on raw features far from standardized (so that scaling matters), saved with --save:
    the folder, with data.npz (X, y, X_test, y_test), m.npz (the model) and m.jsonl (the metrics)."""
    d = tmp_path_factory.mktemp("trained")
    raw = load_dataset(f"synthetic:rows=600,features={FEATURES},classes={CLASSES},test=120", scale="none")
    X, X_test = (np.asarray(s.X) * np.float32(4) + np.float32(50) for s in (raw.train, raw.test))
    np.savez(d / "data.npz", X=X, y=raw.train.y, X_test=X_test, y_test=raw.test.y)
    done = cli(["train", "--data", "data.npz", *LAYERS, *QUICK, "--epochs", "2", "--save", "m.npz",
                "--metrics", "m.jsonl"], d)
    assert done.returncode == 0, done.stderr
    return d


# ---- --save writes a model file -----------------------------------------------------------------

def test_save_still_writes_W_and_b_that_plain_np_load_reads(trained):
    params = load_npz(trained / "m.npz")
    assert {k: params[k].shape for k in ("W0", "b0", "W1", "b1")} == {
        "W0": (FEATURES, 16), "b0": (16,), "W1": (16, CLASSES), "b1": (CLASSES,)}
    model = distbp.load(trained / "m.npz")
    assert np.array_equal(model.params[1][0], params["W1"])


def test_saved_model_carries_the_trainings_scaling(trained):
    model = distbp.load(trained / "m.npz")
    with np.load(trained / "data.npz") as f:
        X = f["X"].astype(np.float64)
    # standardized with the training rows' mean and std (float64 statistics)
    assert np.allclose(model.feature_offset, X.mean(axis=0), rtol=1e-12, atol=1e-9)
    assert np.allclose(model.feature_factor, 1 / X.std(axis=0), rtol=1e-9)


# ---- distbp predict ---------------------------------------------------------------------------

def test_predict_on_csv_and_npy_equals_model_predict(trained):
    with np.load(trained / "data.npz") as f:
        X = f["X_test"]
    np.save(trained / "X.npy", X)
    np.savetxt(trained / "X.csv", X, fmt="%.9g", delimiter=",")  # every float32 reads back the same
    want = distbp.load(trained / "m.npz").predict(X)
    for data, output in (("X.npy", "P.npy"), ("X.csv", "P.csv"), ("X.npy", "P.npz")):
        done = cli(["predict", "--model", "m.npz", "--data", data, "--output", output], trained)
        assert done.returncode == 0, done.stderr
        assert f"wrote the probabilities (3 per row) of {len(X)} rows to {output}" in done.stdout
        got = {"P.npy": lambda: np.load(trained / "P.npy"),
               "P.csv": lambda: np.loadtxt(trained / "P.csv", delimiter=",").astype(np.float32),
               "P.npz": lambda: load_npz(trained / "P.npz")["P"]}[output]()
        assert got.tobytes() == want.tobytes(), (data, output)


def test_the_trainings_scaling_is_applied_once_at_prediction(trained):
    with np.load(trained / "data.npz") as f:
        X = f["X_test"]
    np.save(trained / "raw.npy", X)
    done = cli(["predict", "--model", "m.npz", "--data", "raw.npy", "--output", "P_raw.npy"], trained)
    assert done.returncode == 0, done.stderr
    P = np.load(trained / "P_raw.npy")
    model = distbp.load(trained / "m.npz")
    assert P.tobytes() == model.predict(X).tobytes()
    # the same network without its scaling: on raw rows it predicts something else …
    bare = distbp.load(trained / "m.npz")
    bare.feature_offset = bare.feature_factor = None
    assert np.abs(bare.predict(X) - P).max() > 0.05
    # … and on rows scaled by hand as training's gather does (float32, offset then factor), the same bits
    scaled = X.astype(np.float32)
    scaled -= model.feature_offset.astype(np.float32)
    scaled *= model.feature_factor.astype(np.float32)
    assert bare.predict(scaled).tobytes() == P.tobytes()


def test_predict_labels_are_the_argmax_through_the_models_classes(tmp_path):
    model = MLP([4, 6, 3], seed=5)
    model.classes = np.array(["cat", "dog", "emu"])
    model.save(tmp_path / "m.npz")
    X = np.random.default_rng(0).normal(size=(40, 4))
    np.save(tmp_path / "X.npy", X)
    for output in ("labels.csv", "labels.npz"):
        done = cli(["predict", "--model", "m.npz", "--data", "X.npy", "--output", output, "--labels"], tmp_path)
        assert done.returncode == 0, done.stderr
    want = model.classes[np.argmax(model.predict(X), axis=1)]
    assert (tmp_path / "labels.csv").read_text().split() == list(want)
    assert load_npz(tmp_path / "labels.npz")["labels"].tolist() == list(want)


def test_predict_reads_a_csv_with_a_header_line(tmp_path):
    model = MLP([3, 2], loss="mse", seed=1)
    model.save(tmp_path / "m.npz")
    (tmp_path / "X.csv").write_text("a,b,c\n1,2,3\n4.5,-1,0\n")
    done = cli(["predict", "--model", "m.npz", "--data", "X.csv", "--output", "Y.npy"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "outputs (2 per row) of 2 rows" in done.stdout
    assert np.load(tmp_path / "Y.npy").tobytes() == model.predict(np.array([[1, 2, 3], [4.5, -1, 0.0]])).tobytes()


@pytest.fixture
def small_model(tmp_path):
    MLP([4, 3], seed=2).save(tmp_path / "m.npz")
    np.save(tmp_path / "X5.npy", np.ones((3, 5)))
    np.save(tmp_path / "X4.npy", np.ones((3, 4)))
    data = (tmp_path / "m.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    return tmp_path


@pytest.mark.parametrize("args, phrases", [
    (["--model", "m.npz", "--data", "X5.npy", "--output", "P.npy"], ["X5.npy has 5 features per row, the model "
                                                                     "m.npz takes 4 (a label column?"]),
    (["--model", "cut.npz", "--data", "X4.npy", "--output", "P.npy"], ["cut.npz", "truncated or corrupt"]),
    (["--model", "X4.npy", "--data", "X4.npy", "--output", "P.npy"], ["X4.npy is a single .npy array"]),
    (["--model", "m.npz", "--data", "nope.csv", "--output", "P.npy"], ["data file not found: nope.csv"]),
    (["--model", "m.npz", "--data", "X4.npy", "--output", "P.txt"], ["--output P.txt: give a file name ending in"]),
    (["--model", "m.npz", "--data", "X4.npy"], ["distbp predict needs --output"]),
], ids=["feature count", "truncated model", "not a model file", "missing data", "output format", "no output"])
def test_predict_errors_are_one_line_and_exit_2(small_model, args, phrases):
    done = cli(["predict", *args], small_model)
    assert_one_error_line(done, *phrases)
    assert not (small_model / "P.npy").exists()


# ---- distbp evaluate --------------------------------------------------------------------------

def test_evaluate_reproduces_the_trainings_test_metrics(trained):
    done = cli(["evaluate", "--model", "m.npz", "--data", "data.npz", "--json"], trained)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    last = [json.loads(line) for line in (trained / "m.jsonl").read_text().splitlines()][-1]
    assert (report["split"], report["rows"], report["ranks"]) == ("test", 120, 1)
    assert report["accuracy"] == last["test_accuracy"]
    assert report["loss"] == pytest.approx(last["test_loss"], rel=1e-6)


def test_evaluate_without_a_test_split_scores_all_rows_and_says_so(trained):
    with np.load(trained / "data.npz") as f:
        np.savez(trained / "all.npz", X=f["X_test"], y=f["y_test"])
    done = cli(["evaluate", "--model", "m.npz", "--data", "all.npz"], trained)
    assert done.returncode == 0, done.stderr
    assert "all its rows (it has no test split): 120 rows, 1 rank(s)" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("loss ")


def test_evaluate_on_data_with_other_features_is_one_error(trained):
    done = cli(["evaluate", "--model", "m.npz", "--data", "synthetic:rows=50,features=7,classes=3"], trained)
    assert_one_error_line(done, "has 7 features, the model m.npz takes 20")


# ---- distbp train --init-from -----------------------------------------------------------------

def test_init_from_a_file_of_other_layer_sizes_names_the_layer_and_exits_2(trained):
    done = cli(["train", "--data", "data.npz", "--layers", f"{FEATURES},32,{CLASSES}", *QUICK, "--epochs", "1",
                "--init-from", "m.npz"], trained)
    assert_one_error_line(done, "layer 0: W is 20x16 in m.npz, the model needs 20x32")


def test_init_from_starts_training_from_the_files_parameters(trained):
    # a learning rate this small leaves the parameters where they started: the file's, not the seed's
    done = cli(["train", "--data", "data.npz", *LAYERS, *QUICK, "--lr", "1e-9", "--epochs", "1",
                "--init-from", "m.npz", "--save", "again.npz"], trained)
    assert done.returncode == 0, done.stderr
    assert "starting from the parameters in m.npz (--init-from)" in done.stdout
    start, after = distbp.load(trained / "m.npz"), distbp.load(trained / "again.npz")
    assert np.abs(after.flat_params - start.flat_params).max() < 1e-6
    seed_init = MLP([FEATURES, 16, CLASSES], seed=0).flat_params
    assert np.abs(start.flat_params - seed_init).max() > 1e-3  # the file is not the seed's initialisation


def test_a_checkpoint_found_by_resume_wins_over_init_from(trained, tmp_path):
    first = cli(["train", "--data", str(trained / "data.npz"), *LAYERS, *QUICK, "--epochs", "1",
                 "--checkpoint-dir", "ck"], tmp_path)
    assert first.returncode == 0, first.stderr
    done = cli(["train", "--data", str(trained / "data.npz"), *LAYERS, *QUICK, "--epochs", "2", "--checkpoint-dir",
                "ck", "--resume", "--init-from", str(trained / "m.npz")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed from" in done.stdout and "--init-from" not in done.stdout, done.stdout


# ---- files never lost or wrongly trusted ------------------------------------------------------------

def plant_output(d: Path, how: str) -> tuple[list[str], Path]:
    """The predict arguments whose --output is an input, and the input that must survive."""
    np.savetxt(d / "X4.csv", np.ones((3, 4)), delimiter=",")
    if how == "symlink":
        os.symlink(d / "X4.npy", d / "link.npy")
    if how == "hard link":
        os.link(d / "X4.npy", d / "hard.npy")
    data, output = {"same name": ("X4.npy", "X4.npy"), "csv": ("X4.csv", "X4.csv"),
                    "other spelling": ("X4.npy", f"../{d.name}/./X4.npy"), "symlink": ("X4.npy", "link.npy"),
                    "hard link": ("X4.npy", "hard.npy"), "the model": ("X4.npy", "m.npz")}[how]
    kept = d / ("m.npz" if how == "the model" else data)
    return ["--model", "m.npz", "--data", data, "--output", output], kept


@pytest.mark.parametrize("how", ["same name", "csv", "other spelling", "symlink", "hard link", "the model"])
def test_predict_never_writes_over_its_inputs(small_model, how):
    args, kept = plant_output(small_model, how)
    before = kept.read_bytes()
    done = cli(["predict", *args], small_model)
    flag = "--model" if how == "the model" else "--data"
    assert_one_error_line(done, f"is the {flag} file", "writing it would destroy its contents")
    assert kept.read_bytes() == before
    assert not any(p.name.endswith(".tmp") for p in small_model.iterdir())


NONFINITE = "m.npz: layer 1: W1 holds NaN or Inf"


@pytest.fixture(scope="module")
def nan_model(trained):
    """trained's model with one NaN weight in layer 1, as nan.npz beside it."""
    from inputs import with_nonfinite

    (trained / "nan.npz").write_bytes((trained / "m.npz").read_bytes())
    with_nonfinite(trained / "nan.npz", "W1", np.nan, index=5)
    return trained


@pytest.mark.parametrize("command", [
    ["predict", "--model", "nan.npz", "--data", "X.npy", "--output", "nan_P.npy"],
    ["evaluate", "--model", "nan.npz", "--data", "data.npz"],
    ["train", "--data", "data.npz", *LAYERS, *QUICK, "--epochs", "1", "--init-from", "nan.npz"],
], ids=["predict", "evaluate", "init-from"])
def test_nan_weights_are_one_error_naming_the_layer(nan_model, command):
    if command[0] == "predict":
        with np.load(nan_model / "data.npz") as f:
            np.save(nan_model / "X.npy", f["X_test"])
    done = cli(command, nan_model)
    assert_one_error_line(done, "nan." + NONFINITE[2:])
    assert not (nan_model / "nan_P.npy").exists()
