"""Under MPI: without shuffling, p ranks take the rows in the one stored order and compute 1 rank's parameters
(float64, to rounding), with uneven shards; the exact mode gives the same bits on every layout."""

import numpy as np
import pytest

import distbp
from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm

OPTIONS = dict(epochs=2, batch_size=11, optimizer="momentum", lr=0.01, seed=3, scale="none", shuffle=False,
               timeout=60, verbose=False)


def rows():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((61, 5))
    return X, (X[:, 0] > X[:, 1]).astype(np.int64)


def model():
    return distbp.MLP([5, 9, 2], activation="relu", dtype="float64", seed=6)


@pytest.mark.mpi(min_size=2)
def test_p_ranks_without_shuffling_compute_one_ranks_parameters():
    X, y = rows()
    many, one = model(), model()
    distbp.fit(many, X, y, comm=world(), **OPTIONS)
    distbp.fit(one, X, y, comm=SerialComm(), **OPTIONS)
    np.testing.assert_allclose(many.flat_params, one.flat_params, rtol=1e-10, atol=1e-12)
    shuffled = model()
    distbp.fit(shuffled, X, y, comm=world(), **{**OPTIONS, "shuffle": True})
    assert np.abs(shuffled.flat_params - one.flat_params).max() > 1e-6


@pytest.mark.mpi(min_size=2)
def test_reproducible_without_shuffling_is_bit_identical_to_one_rank():
    X, y = rows()
    many, one = model(), model()
    options = {**OPTIONS, "reproducible": True, "micro_batch": 4}
    distbp.fit(many, X, y, comm=world(), **options)
    distbp.fit(one, X, y, comm=SerialComm(), **options)
    assert many.flat_params.tobytes() == one.flat_params.tobytes()
