"""The command line end to end: `launch/local -n P distbp train …` on every data format writes the saved
parameters and per-epoch metrics; one process works without mpiexec; a config file equals its flags;
only rank 0 prints; P ranks train the same parameters as one rank."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import REPO, load_npz, run_job

pytestmark = pytest.mark.timeout(120)

FEATURES, CLASSES = 8, 3
LAYERS = ["--layers", f"{FEATURES},10,{CLASSES}"]
# a few seconds per job: small data, few epochs, 1 thread per rank
QUICK = ["--epochs", "4", "--batch-size", "20", "--lr", "0.5", "--lr-scale", "mean", "--progress", "none"]
METRIC_KEYS = ("epoch", "train_loss", "train_accuracy", "test_accuracy", "samples_per_s", "compute_s", "comm_s")


# ---- small, easy data in every format --------------------------------------------------------

def easy_problem(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated Gaussian clusters in 8 dimensions, values in (0, 255) so uint8 fits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, rows)
    centres = np.array([[60.0] * FEATURES, [128.0] * FEATURES, [196.0] * FEATURES])
    centres[:, ::2] = centres[::-1, ::2]  # not ordered the same way in every feature
    X = centres[y] + rng.normal(0, 20, (rows, FEATURES))
    return np.clip(X, 1, 254).astype(np.float32), y.astype(np.int64)


def npz_with_test(d: Path) -> str:
    X, y = easy_problem(240)
    np.savez(d / "split.npz", X=X[:200], y=y[:200], X_test=X[200:], y_test=y[200:])
    return str(d / "split.npz")


def npz_without_test(d: Path) -> str:
    X, y = easy_problem(240)
    np.savez(d / "plain.npz", X=X, y=y)
    return str(d / "plain.npz")


def npy_directory(d: Path) -> str:
    X, y = easy_problem(240)
    (d / "npy").mkdir()
    for name, a in (("X", X[:200]), ("y", y[:200]), ("X_test", X[200:]), ("y_test", y[200:])):
        np.save(d / "npy" / f"{name}.npy", a)
    return str(d / "npy")


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes() + a.tobytes()


def mnist_idx(d: Path, gz: bool) -> str:
    """train-* and t10k-* images (n, 2, 4) uint8 and labels in MNIST's IDX layout, gzipped or raw."""
    X, y = easy_problem(240)
    images, labels = X.astype(np.uint8).reshape(-1, 2, 4), y.astype(np.uint8)
    folder = d / ("idx_gz" if gz else "idx_raw")
    folder.mkdir()
    for prefix, rows in (("train", slice(0, 200)), ("t10k", slice(200, 240))):
        for kind, a in ((f"{prefix}-images-idx3-ubyte", images[rows]), (f"{prefix}-labels-idx1-ubyte", labels[rows])):
            data = idx_bytes(a)
            if gz:
                (folder / f"{kind}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / kind).write_bytes(data)
    return str(folder)


def csv_with_label_column(d: Path) -> str:
    X, y = easy_problem(240)
    # the label column in the middle: found by its name, not its position
    header = [f"f{i}" for i in range(4)] + ["label"] + [f"f{i}" for i in range(4, FEATURES)]
    lines = [",".join(header)]
    for row, label in zip(X, y):
        cells = [f"{v:.3f}" for v in row]
        lines.append(",".join(cells[:4] + [str(label)] + cells[4:]))
    (d / "table.csv").write_text("\n".join(lines) + "\n")
    return str(d / "table.csv")


FORMATS = {
    "synthetic": lambda d: f"synthetic:rows=240,features={FEATURES},classes={CLASSES},test=40",
    "npz with test split": npz_with_test,
    "npz without test split": npz_without_test,
    "directory of npy": npy_directory,
    "mnist idx gz": lambda d: mnist_idx(d, gz=True),
    "mnist idx raw": lambda d: mnist_idx(d, gz=False),
    "csv with label column": csv_with_label_column,
}


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_trained(records: list[dict], epochs: int) -> None:
    """One record per epoch with every key; the loss goes down; accuracies are fractions."""
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    for r in records:
        assert all(key in r for key in METRIC_KEYS), r
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1, r
        assert r["samples_per_s"] > 0 and r["compute_s"] >= 0 and r["comm_s"] >= 0, r
    losses = [r["train_loss"] for r in records]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


# ---- every format through launch/local ---------------------------------------------------------

@pytest.mark.parametrize("fmt", list(FORMATS))
def test_two_ranks_train_on_each_format_and_write_params_and_metrics(tmp_path, fmt):
    data = FORMATS[fmt](tmp_path)
    save, metrics = tmp_path / "params.npz", tmp_path / "metrics.jsonl"
    done = run_job(2, ["distbp", "train", "--data", data, *LAYERS, *QUICK, "--save", str(save),
                       "--metrics", str(metrics)], timeout=90)
    assert done.returncode == 0, done.output
    params = load_npz(save)
    assert {k: v.shape for k, v in params.items()} == {
        "W0": (FEATURES, 10), "b0": (10,), "W1": (10, CLASSES), "b1": (CLASSES,)}
    records = read_metrics(metrics)
    assert_trained(records, epochs=4)
    if fmt != "synthetic":  # the built-in set is meant to be harder than a few epochs of a tiny net
        assert records[-1]["test_accuracy"] > 0.9, records[-1]  # well separated clusters


# ---- one process, help, config files ---------------------------------------------------------

def single_process(args: list[str], tmp_path: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """`python -m distbp …` in one process, no mpiexec; one thread."""
    env = dict(os.environ, DISTBP_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    return subprocess.run([sys.executable, "-m", "distbp", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


SYNTHETIC = f"synthetic:rows=160,features={FEATURES},classes={CLASSES},test=40"


def test_one_process_trains_without_mpiexec(tmp_path):
    done = single_process(["train", "--data", SYNTHETIC, *LAYERS, *QUICK, "--save", "p.npz",
                           "--metrics", "m.jsonl"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 rank(s)" in done.stdout
    assert_trained(read_metrics(tmp_path / "m.jsonl"), epochs=4)
    assert load_npz(tmp_path / "p.npz")["W1"].shape == (10, CLASSES)


def test_train_help_exits_zero_and_lists_the_flags(tmp_path):
    distbp = Path(sys.executable).parent / "distbp"
    command = [str(distbp)] if distbp.exists() else [sys.executable, "-m", "distbp"]
    done = subprocess.run([*command, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--data", "--layers", "--config", "--save", "--metrics", "--checkpoint-dir"):
        assert flag in done.stdout


def test_config_file_gives_the_same_parameters_as_the_flags_and_a_flag_wins(tmp_path):
    (tmp_path / "run.toml").write_text(
        "[train]\n"
        f'data = "{SYNTHETIC}"\n'
        f"layers = [{FEATURES}, 10, {CLASSES}]\n"
        'dtype = "float64"\n'
        "epochs = 2\n"
        "batch-size = 20\n"
        "lr = 0.5\n"
        'lr_scale = "mean"\n'
        'progress = "none"\n')
    flags = ["train", "--data", SYNTHETIC, *LAYERS, "--dtype", "float64", "--epochs", "2", "--batch-size", "20",
             "--lr-scale", "mean", "--progress", "none"]
    runs = {
        "flags": single_process([*flags, "--lr", "0.5", "--save", "flags.npz"], tmp_path),
        "file": single_process(["train", "--config", "run.toml", "--save", "file.npz"], tmp_path),
        "flags, lr 0.05": single_process([*flags, "--lr", "0.05", "--save", "flags_low.npz"], tmp_path),
        "file, --lr 0.05": single_process(["train", "--config", "run.toml", "--lr", "0.05", "--save",
                                           "file_low.npz"], tmp_path),
    }
    for name, done in runs.items():
        assert done.returncode == 0, f"{name}: {done.stderr}"
    flags_p, file_p = load_npz(tmp_path / "flags.npz"), load_npz(tmp_path / "file.npz")
    low_flags, low_file = load_npz(tmp_path / "flags_low.npz"), load_npz(tmp_path / "file_low.npz")
    for k in flags_p:
        assert np.array_equal(flags_p[k], file_p[k]), k
        assert np.array_equal(low_flags[k], low_file[k]), k
    assert not np.array_equal(flags_p["W0"], low_file["W0"])  # the flag's lr was used, not the file's


# ---- output, losses, optimizers, plot ----------------------------------------------------------

def test_only_rank_zero_prints_the_epoch_summary(tmp_path):
    done = run_job(3, ["distbp", "train", "--data", SYNTHETIC, *LAYERS, *QUICK, "--save", str(tmp_path / "p.npz")],
                   timeout=90)
    assert done.returncode == 0, done.output
    for epoch in range(1, 5):
        assert sum(line.startswith(f"epoch {epoch:3d} ") for line in done.stdout.splitlines()) == 1, done.output
    assert done.stdout.count("3 rank(s)") == 1, done.output
    assert done.stdout.count("saved parameters") == 1, done.output


@pytest.mark.parametrize("data,flags", [
    (["--data", "digits", "--layers", "64,16,10"], ["--loss", "mse"]),
    (["--data", "digits", "--layers", "64,16,10"], ["--loss", "mse", "--output-activation", "sigmoid"]),
    (None, ["--optimizer", "momentum", "--momentum", "0.9", "--lr", "0.1"]),
    (None, ["--optimizer", "adam", "--lr", "0.01"]),
], ids=["mse on a built-in set's one-hot labels", "the textbook network: sigmoid outputs, mse", "momentum", "adam"])
def test_losses_and_optimizers_train(tmp_path, data, flags):
    metrics = tmp_path / "m.jsonl"
    data = data or ["--data", npz_with_test(tmp_path), *LAYERS]
    done = run_job(2, ["distbp", "train", *data, *QUICK, *flags, "--metrics", str(metrics)], timeout=90)
    assert done.returncode == 0, done.output
    records = read_metrics(metrics)
    assert_trained(records, epochs=4)
    assert records[-1]["test_accuracy"] > 0.7, records[-1]  # chance is 1/3


def test_plot_draws_a_png_from_the_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10,
                                           "test_loss": 1.1 / e, "test_accuracy": 0.4 + e / 10}) + "\n"
                               for e in range(1, 4)))
    done = single_process(["plot", str(metrics), "-o", "out.png"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- accuracy and rank-count independence -----------------------------------------------------

@pytest.mark.parametrize("ranks", [2])  # uneven splits: test_p_ranks_save_the_same_parameters_as_one_rank
def test_digits_reach_95_percent_test_accuracy(tmp_path, ranks):
    pytest.importorskip("sklearn")
    metrics = tmp_path / "m.jsonl"
    done = run_job(ranks, ["distbp", "train", "--data", "digits", "--layers", "64,128,10", "--activation", "relu",
                           "--optimizer", "adam", "--lr", "0.003", "--lr-scale", "mean", "--batch-size", "64",
                           "--epochs", "12", "--progress", "none", "--metrics", str(metrics)], timeout=120)
    assert done.returncode == 0, done.output
    assert read_metrics(metrics)[-1]["test_accuracy"] >= 0.95, done.stdout


@pytest.fixture(scope="module")
def one_rank_params(tmp_path_factory):
    """Saved parameters of 1-rank runs, per batch size (computed once, compared with 2 and 3 ranks)."""
    cache = {}

    def get(batch: int) -> dict:
        if batch not in cache:
            d = tmp_path_factory.mktemp(f"one_rank_b{batch}")
            done = run_job(1, same_run_args(d, batch), timeout=90)
            assert done.returncode == 0, done.output
            cache[batch] = load_npz(d / "p.npz")
        return cache[batch]
    return get


def same_run_args(d: Path, batch: int) -> list[str]:
    return ["distbp", "train", "--data", f"synthetic:rows=90,features={FEATURES},classes={CLASSES},test=20",
            *LAYERS, "--dtype", "float64", "--activation", "tanh", "--optimizer", "adam", "--lr", "0.01",
            "--batch-size", str(batch), "--epochs", "2", "--progress", "none", "--save", str(d / "p.npz")]


# 3 ranks: 25 rows do not divide, and 1 row leaves two ranks empty (in-process, tests/mpi/test_train_mpi.py runs 2-4)
@pytest.mark.parametrize("ranks", [3])
@pytest.mark.parametrize("batch", [25, 1], ids=["batch not divisible", "batch smaller than ranks"])
def test_p_ranks_save_the_same_parameters_as_one_rank(tmp_path, one_rank_params, ranks, batch):
    done = run_job(ranks, same_run_args(tmp_path, batch), timeout=90)
    assert done.returncode == 0, done.output
    want, got = one_rank_params(batch), load_npz(tmp_path / "p.npz")
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float64
        assert np.abs(got[k] - want[k]).max() < 1e-10, k


