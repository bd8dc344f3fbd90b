"""distbp.fit under MPI: the CLI's results from Python, and ranks that each pass their own rows.

Run by launch/test under MPI on 2, 3 and 4 ranks:
    launch/local -n 3 python -m pytest --with-mpi -m mpi tests/mpi/test_api_mpi.py
"""

import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from jobs import load_npz

import distbp
from distbp.comm.serial import SerialComm

SPEC = dict(epochs=2, batch_size=13, optimizer="momentum", lr=0.005, seed=3, timeout=60)


def mpi():
    from mpi4py import MPI
    return MPI.COMM_WORLD


@pytest.fixture
def shared_tmp():
    """A folder every rank of this test sees (the root makes it, and removes it once every rank is done)."""
    path = Path(mpi().bcast(tempfile.mkdtemp(prefix="distbp-api-") if mpi().rank == 0 else None))
    yield path
    mpi().Barrier()
    if mpi().rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def rows(n: int, seed: int, features: int = 9, classes: int = 3, offset: float = 3.0):
    centres = np.random.default_rng(7).standard_normal((classes, features)) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.standard_normal((n, features)) + offset).astype(np.float32), y


def digest(model) -> str:
    return hashlib.sha256(model.flat_params.tobytes()).hexdigest()


@pytest.mark.mpi(min_size=2)
def test_fit_on_p_ranks_saves_the_bytes_distbp_train_saves_on_p_ranks(shared_tmp):
    from distbp.cli import main

    tmp = shared_tmp
    X, y = rows(230, seed=1)
    Xt, yt = rows(40, seed=2)
    if mpi().rank == 0:
        np.savez(tmp / "d.npz", X=X, y=y, X_test=Xt, y_test=yt)
    mpi().Barrier()
    argv = ["train", "--data", str(tmp / "d.npz"), "--layers", "9,7,3", "--activation", "relu", "--epochs", "2",
            "--batch-size", "13", "--optimizer", "momentum", "--lr", "0.005", "--seed", "3", "--timeout", "60",
            "--progress", "none", "--save", str(tmp / "cli.npz")]
    assert main(argv) == 0
    model = distbp.MLP([9, 7, 3], activation="relu", seed=3)
    distbp.fit(model, X, y, validation=(Xt, yt), verbose=False, **SPEC)
    saved = load_npz(tmp / "cli.npz")
    assert all(W.tobytes() == saved[f"W{l}"].tobytes() and b.tobytes() == saved[f"b{l}"].tobytes()
               for l, (W, b) in enumerate(model.params))


@pytest.mark.mpi(min_size=2)
def test_fit_on_p_ranks_matches_one_rank_in_float64():
    X, y = rows(211, seed=4)
    p_model = distbp.MLP([9, 7, 3], activation="tanh", dtype="float64", seed=3)
    p_history = distbp.fit(p_model, X, y, validation=0.1, verbose=False, **SPEC)
    one = distbp.MLP([9, 7, 3], activation="tanh", dtype="float64", seed=3)
    one_history = distbp.fit(one, X, y, validation=0.1, verbose=False, comm=SerialComm(), **SPEC)
    assert np.abs(p_model.flat_params - one.flat_params).max() < 1e-10
    assert p_history[-1]["test_accuracy"] == pytest.approx(one_history[-1]["test_accuracy"])


def my_rows(rank: int, seed: int = 10):
    """Each rank's own rows: a different count on every rank (rank r has 60 + 25·r)."""
    return rows(60 + 25 * rank, seed=seed + rank)


@pytest.mark.mpi(min_size=2)
def test_ranks_with_their_own_rows_train_one_model_over_all_rows():
    comm = mpi()
    X, y = my_rows(comm.rank)
    model = distbp.MLP([9, 7, 3], activation="tanh", seed=3)
    history = distbp.fit(model, X, y, local_rows=True, validation=0.2, verbose=False, **SPEC)
    assert len(set(comm.allgather(digest(model)))) == 1  # the same parameters on every rank
    train = comm.allreduce(len(X) - max(1, round(0.2 * len(X))))
    assert history[-1]["steps"] == 2 * -(-train // SPEC["batch_size"])  # every row once an epoch
    # one scaling for all ranks' training rows: their mean, not this rank's
    assert len(set(comm.allgather(model.feature_offset.tobytes()))) == 1


@pytest.mark.mpi(min_size=2)
def test_ranks_with_their_own_rows_resume_bit_exactly(shared_tmp):
    comm = mpi()
    tmp = shared_tmp
    X, y = my_rows(comm.rank)
    options = dict(SPEC, epochs=3, local_rows=True, verbose=False)
    whole = distbp.MLP([9, 7, 3], seed=3)
    distbp.fit(whole, X, y, **options)
    first = distbp.MLP([9, 7, 3], seed=3)
    distbp.fit(first, X, y, checkpoint_dir=str(tmp / "ck"), callback=lambda r: r["epoch"] == 1, **options)
    resumed = distbp.MLP([9, 7, 3], seed=3)
    trained = []  # the epochs the resumed call trains: their records, through the callback
    history = distbp.fit(resumed, X, y, checkpoint_dir=str(tmp / "ck"), resume=True,
                         callback=lambda r: trained.append(r["epoch"]), **options)
    assert trained == [2, 3]  # it went on after epoch 1, the checkpoint's, not from the start
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert resumed.flat_params.tobytes() == whole.flat_params.tobytes()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("change, words", [
    ("features", "rank 0 has 9 feature(s); rank 1: 8 feature(s)"),
    ("targets", "rank 0 has float targets; rank 1: class labels"),
    ("held-out", "rank 0 has held-out rows; rank 1: none"),
])
def test_ranks_whose_rows_cannot_be_one_dataset_are_refused(change, words):
    comm = mpi()
    X, y = my_rows(comm.rank)
    validation = 0.2
    loss = "cross_entropy"
    if comm.rank == 1 and change == "features":
        X = X[:, :8]
    if change == "targets":
        loss = "mse"
        if comm.rank != 1:  # one-hot float targets everywhere but on rank 1, which passes class labels
            y = np.eye(3)[y]
    if comm.rank == 1 and change == "held-out":
        validation = None
    model = distbp.MLP([X.shape[1], 7, 3], loss=loss, seed=3)
    with pytest.raises(distbp.DistbpError) as info:
        distbp.fit(model, X, y, local_rows=True, validation=validation, verbose=False, **SPEC)
    assert words in str(info.value)
    assert comm.allgather(type(info.value).__name__) == [type(info.value).__name__] * comm.size
