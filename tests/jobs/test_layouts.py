"""Same bits whatever the layout: the data does not depend on threads, and --reproducible gives the
same parameters for every ranks × threads layout.

A layout is written R×T: R ranks of T threads each (4×1 and 2×2 oversubscribe a 2-core machine).
On a CPU whose BLAS gives other bits on 1 and 2 threads (AMD Zen 3's OpenBLAS float32 GEMM), a
thread-dependent step anywhere in the data or in the exact sum shows here.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from jobs import REPO, load_npz, run_job

THREAD_VARS = ("DISTBP_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

DIGEST_OF_DATA = """
import hashlib, sys
import numpy as np
from distbp.data.datasets import load_dataset
ds = load_dataset(sys.argv[1], seed=3, scale=sys.argv[2])
h = hashlib.sha256()
for split in (ds.train, ds.test):
    n = split.n_rows
    X = np.empty((n, ds.n_features), np.float32)
    y = np.empty(n, np.int64) if ds.n_classes else np.empty((n, ds.n_targets), np.float32)
    split.gather(np.arange(n, dtype=np.int64), X, y)
    h.update(X.tobytes()); h.update(y.tobytes())
print(h.hexdigest())
"""


def data_digest(spec: str, scale: str, threads: int) -> str:
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS}, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", DIGEST_OF_DATA, spec, scale], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def npz_file(tmp_path_factory):
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    X = (rng.standard_normal((3000, 40)) * 7 + 100).astype(np.float32)
    np.savez(path, X=X, y=rng.integers(0, 4, 3000))
    return str(path)


@pytest.mark.parametrize("spec,scale", [("synthetic:rows=3000,features=40,classes=7", "auto"),
                                        ("digits", "auto"), ("NPZ", "standardize"), ("NPZ", "minmax")])
def test_loaded_rows_are_the_same_bytes_on_one_and_two_threads(spec, scale, npz_file):
    spec = npz_file if spec == "NPZ" else spec
    assert data_digest(spec, scale, 1) == data_digest(spec, scale, 2)


def train(tmp_path, name, *extra) -> list[str]:
    return ["distbp", "train", "--layers", "40,24,16,7", "--activation", "sigmoid", "--batch-size", "100",
            "--seed", "9", "--progress", "none", "--lr", "0.002", "--optimizer", "adam",
            "--save", str(tmp_path / f"{name}.npz"), *extra]


LAYOUTS = [(1, 1), (1, 2), (2, 1), (3, 1), (4, 1), (2, 2)]


@pytest.mark.parametrize("dtype,data,layouts", [
    ("float32", "synthetic:rows=1030,features=40,classes=7", LAYOUTS),  # a held-out split, partial last batch
    ("float64", "synthetic:rows=930,features=40,classes=7,test=40", [(1, 1), (3, 1), (2, 2)]),  # its own test split
])
def test_reproducible_saves_the_same_bytes_on_every_layout(tmp_path, dtype, data, layouts):
    # (with adam: its state too; test_cli once ran the same on 1-4 ranks, a subset of these layouts. float64
    # takes three layouts of the six: uneven shards, threads and ranks together, and the single rank)
    common = ["--data", data, "--dtype", dtype, "--reproducible", "--micro-batch", "16", "--epochs", "2"]
    saved = {}
    for ranks, threads in layouts:
        name = f"{ranks}x{threads}"
        done = run_job(ranks, train(tmp_path, name, *common), timeout=120, threads=threads)
        assert done.returncode == 0, done.output
        saved[name] = {k: v.tobytes() for k, v in load_npz(tmp_path / f"{name}.npz").items()}
    assert all(saved[name] == saved["1x1"] for name in saved), [n for n in saved if saved[n] != saved["1x1"]]


def test_reproducible_resumed_on_another_layout_saves_the_same_bytes(tmp_path):
    common = ["--data", "synthetic:rows=1030,features=40,classes=7", "--reproducible", "--micro-batch", "16"]
    straight = run_job(1, train(tmp_path, "straight", *common, "--epochs", "2"), timeout=120, threads=2)
    assert straight.returncode == 0, straight.output
    ck = ["--checkpoint-dir", str(tmp_path / "ck")]
    first = run_job(2, train(tmp_path, "first", *common, *ck, "--epochs", "1"), timeout=120, threads=1)
    assert first.returncode == 0, first.output
    resumed = run_job(3, train(tmp_path, "resumed", *common, *ck, "--epochs", "2", "--resume"), timeout=120,
                      threads=1)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.output
    want = {k: v.tobytes() for k, v in load_npz(tmp_path / "straight.npz").items()}
    assert {k: v.tobytes() for k, v in load_npz(tmp_path / "resumed.npz").items()} == want


def test_default_mode_in_float64_agrees_across_layouts_to_1e_12(tmp_path):
    common = ["--data", "synthetic:rows=1030,features=40,classes=7", "--dtype", "float64", "--epochs", "4"]
    saved = {}
    for ranks, threads in [(1, 2), (2, 1), (3, 1)]:
        name = f"{ranks}x{threads}"
        done = run_job(ranks, train(tmp_path, name, *common), timeout=120, threads=threads)
        assert done.returncode == 0, done.output
        saved[name] = load_npz(tmp_path / f"{name}.npz")
    for name, params in saved.items():
        for k, v in params.items():
            assert np.abs(v - saved["1x2"][k]).max() < 1e-12, (name, k)

