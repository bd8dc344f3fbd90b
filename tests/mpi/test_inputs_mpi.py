"""distbp.fit's argument errors under MPI: a bad argument or a callback's bad answer on one rank is the same
ConfigError (a ValueError) on every rank, naming the rank, and nothing hangs.

    launch/local -n 2 python -m pytest --with-mpi -m mpi tests/mpi/test_inputs_mpi.py
"""

import numpy as np
import pytest

import distbp

SPEC = dict(epochs=2, batch_size=16, lr=0.01, seed=3, timeout=60, verbose=False)


def mpi():
    from mpi4py import MPI
    return MPI.COMM_WORLD


def blobs(n: int = 80):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    return (rng.standard_normal((n, 6)) + y[:, None]).astype(np.float32), y


@pytest.mark.mpi(min_size=2)
def test_a_bad_argument_on_one_rank_is_the_same_value_error_on_every_rank():
    comm = mpi()
    X, y = blobs()
    threads = 0 if comm.rank == 1 else 1
    with pytest.raises(distbp.ConfigError) as info:
        distbp.fit(distbp.MLP([6, 5, 3]), X, y, threads=threads, **SPEC)
    assert isinstance(info.value, ValueError)
    assert "rank 1" in str(info.value) and "threads must be at least 1, got 0" in str(info.value) and "--threads" not in str(info.value)
    assert len(set(comm.allgather(str(info.value)))) == 1


@pytest.mark.mpi(min_size=2)
def test_a_callback_answering_an_array_on_one_rank_stops_every_rank_with_its_error():
    comm = mpi()
    X, y = blobs()
    model = distbp.MLP([6, 5, 3], seed=1)
    before = model.flat_params.copy()

    def stop_here(record):
        return np.ones(2) if comm.rank == 1 else False

    with pytest.raises(distbp.ConfigError) as info:
        distbp.fit(model, X, y, callback=stop_here, **SPEC)
    assert "rank 1" in str(info.value) and "callback" in str(info.value) and "stop_here" in str(info.value)
    assert "it must return a bool" in str(info.value)
    assert len(set(comm.allgather(str(info.value)))) == 1
    assert np.array_equal(model.flat_params, before)
