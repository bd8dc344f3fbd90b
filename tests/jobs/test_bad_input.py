"""Every class of bad input stops a 2-rank `distbp train` job at start-up with a non-zero exit code and
one clear message naming the cause: printed once by the root, not once per rank, and never a hang."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jobs import run_job

pytestmark = pytest.mark.timeout(90)

FEATURES, CLASSES, ROWS = 16, 4, 60
TRAIN = ["distbp", "train", "--epochs", "1", "--batch-size", "16", "--progress", "none", "--timeout", "30"]


def arrays(rows: int = ROWS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, rows)


def truncated(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of uint8 values: 2 zero bytes, dtype code 0x08, ndim, big-endian dims, data."""
    return bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes() + a.tobytes()


def csv_text(X: np.ndarray, y: np.ndarray) -> list[str]:
    header = ",".join(f"f{i}" for i in range(X.shape[1])) + ",label"
    return [header] + [",".join(map(str, row)) + f",{label}" for row, label in zip(X, y)]


# each builder writes its bad input into the folder and returns the --data argument

def malformed_npz(d: Path) -> str:
    (d / "bad.npz").write_bytes(b"this is not a zip archive")
    return str(d / "bad.npz")


def truncated_npz(d: Path) -> str:
    X, y = arrays()
    np.savez(d / "cut.npz", X=X, y=y)
    truncated(d / "cut.npz")
    return str(d / "cut.npz")


def truncated_npy_in_directory(d: Path) -> str:
    X, y = arrays()
    (d / "set").mkdir()
    np.save(d / "set" / "X.npy", X)
    np.save(d / "set" / "y.npy", y)
    truncated(d / "set" / "X.npy", keep=0.8)
    return str(d / "set")


def truncated_idx_gz(d: Path) -> str:
    X, y = arrays()
    (d / "mnist").mkdir()
    images = gzip.compress(idx_bytes((np.abs(X) * 50).astype(np.uint8).reshape(ROWS, 4, 4)))
    (d / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(images[: len(images) // 2])
    (d / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y.astype(np.uint8))))
    return str(d / "mnist")


def ragged_csv(d: Path) -> str:
    lines = csv_text(*arrays())
    lines[12] = lines[12].rsplit(",", 2)[0]  # line 13 of the file loses two cells
    (d / "ragged.csv").write_text("\n".join(lines) + "\n")
    return str(d / "ragged.csv")


def string_features_csv(d: Path) -> str:
    lines = csv_text(*arrays())
    lines[6] = "abc," + lines[6].split(",", 1)[1]  # line 7, column f0
    (d / "words.csv").write_text("\n".join(lines) + "\n")
    return str(d / "words.csv")


def float_labels_npz(d: Path) -> str:
    X, y = arrays()
    np.savez(d / "float_y.npz", X=X, y=y.astype(np.float64) + 0.5)
    return str(d / "float_y.npz")


def nan_features_npz(d: Path) -> str:
    X, y = arrays()
    X[7, 3] = np.nan
    np.savez(d / "nan.npz", X=X, y=y)
    return str(d / "nan.npz")


def inf_features_npz(d: Path) -> str:
    X, y = arrays()
    X[9, 1] = -np.inf
    np.savez(d / "inf.npz", X=X, y=y)
    return str(d / "inf.npz")


def labels_beyond_outputs_npz(d: Path) -> str:
    X, y = arrays()
    y[5] = 9  # labels 0, 1, 2, 3 and 9: five classes (mapped through their sorted set), --layers ends with 4
    np.savez(d / "ten.npz", X=X, y=y)
    return str(d / "ten.npz")


def good_npz(d: Path) -> str:
    X, y = arrays()
    np.savez(d / "good.npz", X=X, y=y)
    return str(d / "good.npz")


def two_rows_npz(d: Path) -> str:
    X, y = arrays(4)
    np.savez(d / "two.npz", X=X[:2], y=y[:2], X_test=X[2:], y_test=y[2:])
    return str(d / "two.npz")


def fifo(d: Path) -> str:
    os.mkfifo(d / "pipe.npz")  # reading it would block forever
    return str(d / "pipe.npz")


def endless_csv(d: Path) -> str:
    (d / "zero.csv").symlink_to("/dev/zero")  # reading it would never end
    return str(d / "zero.csv")


def stray_label_npz(d: Path) -> str:
    X, y = arrays()
    y[5] = 1_000_000  # one label among 4 classes would make a million outputs
    np.savez(d / "stray.npz", X=X, y=y)
    return str(d / "stray.npz")


def blocked_output(d: Path) -> str:
    (d / "blocker").write_text("a file where a folder should be")
    return good_npz(d)


LAYERS = ["--layers", f"{FEATURES},8,{CLASSES}"]

# (id, data builder, extra flags, ranks, words that must appear in the one error message)
CASES = [
    ("malformed npz", malformed_npz, LAYERS, 2, ["bad.npz", "not an .npz"]),
    ("truncated npz", truncated_npz, LAYERS, 2, ["cut.npz", "cannot read"]),
    ("truncated npy", truncated_npy_in_directory, LAYERS, 2, ["X.npy", "cannot read"]),
    ("truncated idx gz", truncated_idx_gz, LAYERS, 2, ["train-images-idx3-ubyte.gz", "corrupt gzip"]),
    ("ragged csv row", ragged_csv, LAYERS, 2, ["ragged.csv", "line 13", "cells"]),
    ("string features in csv", string_features_csv, LAYERS, 2, ["words.csv", "line 7", "non-numeric", "'abc'"]),
    ("float labels in npz", float_labels_npz, LAYERS, 2, ["float_y.npz", "non-integer labels"]),
    ("nan in features", nan_features_npz, LAYERS, 2, ["nan.npz", "NaN or Inf", "row 7"]),
    ("inf in features", inf_features_npz, LAYERS, 2, ["inf.npz", "NaN or Inf", "row 9"]),
    ("labels out of range", labels_beyond_outputs_npz, LAYERS, 2, ["4 outputs", "5 classes [0, 1, 2, 3, 9]"]),
    ("fewer rows than ranks", two_rows_npz, LAYERS, 3, ["2 training rows", "3 ranks"]),
    ("zero-size layer", good_npz, ["--layers", f"{FEATURES},0,{CLASSES}"], 2, ["--layers", "positive"]),
    ("negative learning rate", good_npz, LAYERS + ["--lr", "-0.1"], 2, ["--lr must be positive", "-0.1"]),
    ("zero batch", good_npz, LAYERS + ["--batch-size", "0"], 2, ["--batch-size must be positive"]),
    ("unknown flag", good_npz, LAYERS + ["--learning-rat", "0.1"], 2, ["unrecognized arguments", "--learning-rat"]),
    ("not a number", good_npz, LAYERS + ["--lr", "fast"], 2, ["--lr", "invalid float value", "'fast'"]),
    ("resume without checkpoint dir", good_npz, LAYERS + ["--resume"], 2, ["--resume needs --checkpoint-dir"]),
    ("reproducible with bfloat16", good_npz, LAYERS + ["--reproducible", "--comm-dtype", "bfloat16"], 2,
     ["--reproducible", "--comm-dtype", "conflict"]),
    ("infinite learning rate", good_npz, LAYERS + ["--lr", "inf"], 2, ["--lr must be a finite number"]),
    ("unknown activation", good_npz, LAYERS + ["--activation", "foo"], 2, ["--activation 'foo'", "sigmoid"]),
    ("activations for other layers", good_npz, LAYERS + ["--activation", "relu,tanh"], 2,
     ["2 activations for 1 hidden layer"]),
    ("activations for the default layers", good_npz, ["--activation", "relu,tanh"], 2,
     ["2 activations given for 1 hidden layers"]),
    ("bucket below an element", good_npz, LAYERS + ["--bucket-mb", "1e-9"], 2, ["--bucket-mb", "16 bytes"]),
    ("infinite bucket", good_npz, LAYERS + ["--bucket-mb", "inf"], 2, ["--bucket-mb must be a finite number"]),
    ("nonsense memory budget", good_npz, LAYERS + ["--dry-run", "--memory-budget", "lots"], 2,
     ["--memory-budget", "'lots'"]),
    ("watchdog timeout too short", good_npz, LAYERS + ["--timeout", "0.001"], 2, ["--timeout", "at least 1 second"]),
    ("fifo as data", fifo, LAYERS, 2, ["pipe.npz", "not a regular file"]),
    ("endless file as csv", endless_csv, LAYERS, 2, ["zero.csv", "not a regular file"]),
    ("a stray label", stray_label_npz, LAYERS, 2, ["stray.npz", "not class numbers", "1000000"]),
    ("a built-in set too big for the machine", good_npz, ["--data", "synthetic:rows=4000000000,features=784"], 2,
     ["not enough memory to load"]),
    ("a layer too big for the machine", good_npz, ["--layers", f"{FEATURES},1000000000,{CLASSES}"], 2,
     ["would need", "of memory"]),
]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("distbp: error:")]


def assert_one_clear_error(done, words: list[str]) -> None:
    """Non-zero exit; exactly one error line, on stderr, naming every word; no traceback."""
    assert done.returncode != 0, done.output
    combined = done.stdout + done.stderr
    errors = error_lines(combined)
    assert len(errors) == 1, f"expected the error once, got {len(errors)}:\n{done.output}"
    assert errors[0] in done.stderr
    for word in words:
        assert word in errors[0], f"{word!r} missing from the error\n{done.output}"
        # the cause itself is printed once too, not again by another rank in some other form
        assert combined.count(word) == 1 or word.startswith("--"), done.output
    assert "Traceback" not in combined, done.output


@pytest.mark.parametrize("build,flags,ranks,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(tmp_path, build, flags, ranks, words):
    data = build(tmp_path)
    done = run_job(ranks, [*TRAIN, "--data", data, *flags], timeout=60)
    assert_one_clear_error(done, words)
    assert "no progress" not in done.output, done.output  # a start-up failure, not the watchdog's


def config_file(d: Path, text: str) -> str:
    (d / "run.toml").write_text("[train]\n" + text + "\n")
    return str(d / "run.toml")


CONFIG_CASES = [
    ("layers as words", lambda d: config_file(d, 'layers = "a,b"'), ["run.toml", "layers", "'a,b'"]),
    ("lr as a word", lambda d: config_file(d, 'lr = "fast"'), ["run.toml", "lr = 'fast'", "a number"]),
    ("fractional batch", lambda d: config_file(d, "batch_size = 12.5"), ["run.toml", "batch_size = 12.5", "integer"]),
    ("a word among the layers", lambda d: config_file(d, 'layers = [8, "x", 3]'), ["run.toml", "list of integers"]),
    ("threads as a word", lambda d: config_file(d, 'threads = "many"'), ["run.toml", "threads = 'many'"]),
    ("fifo as config", lambda d: (os.mkfifo(d / "pipe.toml"), str(d / "pipe.toml"))[1],
     ["pipe.toml", "not a regular file"]),
    ("a device as config", lambda d: "/dev/zero", ["/dev/zero", "not a regular file"]),
]


@pytest.mark.parametrize("build,words", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_a_bad_config_file_is_one_clear_error(tmp_path, build, words):
    done = run_job(2, [*TRAIN, "--data", good_npz(tmp_path), "--config", build(tmp_path)], timeout=60)
    assert_one_clear_error(done, words)
    assert done.returncode == 2 and "no progress" not in done.output, done.output  # a start-up check's error


@pytest.mark.parametrize("flag", ["--save", "--metrics"])
def test_an_output_path_that_cannot_be_written_is_found_before_training(tmp_path, flag):
    data = blocked_output(tmp_path)
    target = str(tmp_path / "blocker" / "out")
    done = run_job(2, [*TRAIN, "--data", data, *LAYERS, "--epochs", "50", flag, target], timeout=60)
    assert_one_clear_error(done, [flag, target, "a file is in the way"])
    assert "epoch   1" not in done.stdout, done.output  # refused before the first step


def test_checkpoint_of_another_model_shape_is_one_clear_error(tmp_path):
    data = good_npz(tmp_path)
    ckpt = str(tmp_path / "ckpt")
    first = run_job(2, [*TRAIN, "--data", data, *LAYERS, "--checkpoint-dir", ckpt], timeout=60)
    assert first.returncode == 0, first.output
    done = run_job(2, [*TRAIN, "--data", data, "--layers", f"{FEATURES},6,{CLASSES}",
                       "--checkpoint-dir", ckpt, "--resume"], timeout=60)
    assert_one_clear_error(done, ["incompatible checkpoint", "layers", "[16, 8, 4]", "[16, 6, 4]"])


def test_ranks_reading_different_data_under_one_name_are_stopped(tmp_path):
    # mpiexec's MPMD form starts each rank in its own folder, each with a data.npz of its own
    import subprocess
    import sys

    for k in (0, 1):
        (tmp_path / f"w{k}").mkdir()
        X, y = arrays()
        np.savez(tmp_path / f"w{k}" / "data.npz", X=X + k, y=y)  # same shape, other values
    python = sys.executable
    mpiexec = str(Path(python).parent / "mpiexec")
    rank = [python, "-m", "mpi4py", "-m", "distbp", *TRAIN[1:], "--data", "data.npz", *LAYERS]
    cmd = [mpiexec, "-n", "1", "-wdir", str(tmp_path / "w0"), *rank, ":", "-n", "1", "-wdir", str(tmp_path / "w1"),
           *rank]
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DISTBP_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "configuration differs between ranks" in errors[0], done.stderr
    assert "data_fingerprint" in done.stderr, done.stderr


def test_a_gzipped_idx_claiming_more_than_memory_is_refused_before_decompressing(tmp_path):
    # 3 GiB of zeros would compress to a few MiB; the header alone claims far more than any machine has
    header = bytes([0, 0, 0x08, 3]) + np.array([10**6, 10**3, 10**3], dtype=">u4").tobytes()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(1 << 20))
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + np.array([10**6], dtype=">u4").tobytes() + bytes(10**6))
    done = run_job(2, [*TRAIN, "--data", str(tmp_path)], timeout=60)
    assert_one_clear_error(done, ["train-images-idx3-ubyte.gz", "claims 931.3 GiB", "memory"])


def test_a_clear_error_ends_the_job_without_mpi_abort_lines(tmp_path):
    done = run_job(2, [*TRAIN, "--data", good_npz(tmp_path), *LAYERS, "--lr", "-1"], timeout=60)
    assert done.returncode == 2, done.output
    assert "Abort(" not in done.stdout + done.stderr, done.output


def peak_rss_of(args: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    """Run `python -m distbp train args` (one process) and return its peak resident memory in bytes."""
    code = ("import json, resource, subprocess, sys\n"
            "done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)\n"
            "print(json.dumps({'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,\n"
            "                  'code': done.returncode, 'err': done.stderr}))\n")
    env = dict(os.environ, DISTBP_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "distbp", "train", *args],
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return got["rss"], subprocess.CompletedProcess(args, got["code"], "", got["err"])


def idx_claiming_a_terabyte(d: Path) -> str:
    """MNIST files whose gzipped image header claims 10^12 bytes (the stream holds 1 MiB of zeros)."""
    header = bytes([0, 0, 0x08, 3]) + np.array([10**6, 10**3, 10**3], dtype=">u4").tobytes()
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + bytes(1 << 20))
    with gzip.open(d / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + np.array([10**6], dtype=">u4").tobytes() + bytes(10**6))
    return str(d)


MEMORY_CASES = [c for c in CASES if c[0] in ("a stray label", "a built-in set too big for the machine",
                                            "a layer too big for the machine", "endless file as csv")]
MEMORY_CASES.append(("an IDX header claiming a terabyte", idx_claiming_a_terabyte, [], 1, ["claims 931.3 GiB"]))


def test_inputs_that_would_take_the_machines_memory_are_refused_at_a_small_peak(tmp_path):
    # the peak of a small good run of the same process is the yardstick: a refusal must stay near it
    good, done = peak_rss_of([*TRAIN[2:], "--data", good_npz(tmp_path), *LAYERS])
    assert done.returncode == 0, done.stderr
    for name, build, flags, _, words in MEMORY_CASES:
        d = tmp_path / name.replace(" ", "_")
        d.mkdir()
        peak, done = peak_rss_of([*TRAIN[2:], "--data", build(d), *flags])
        assert done.returncode == 2 and all(w in done.stderr for w in words), (name, done.stderr)
        assert peak < good + (64 << 20), f"{name}: peak {peak >> 20} MiB, a good run's {good >> 20} MiB"
