"""Under MPI: per-row weights ride with their rows through every layout. p ranks compute 1 rank's parameters
(float64, to rounding), uneven shards and the mean's Σ wₙ divisor included; the exact mode stays bit-identical
to one rank; and ranks that each hold their own weighted rows train exactly as the weights say."""

import numpy as np
import pytest

import distbp
from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm

BASE = dict(epochs=2, batch_size=13, lr=0.01, seed=4, scale="none", timeout=60, verbose=False)


def rows(n: int = 67, seed: int = 3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    y = (X[:, 0] - X[:, 3] > 0).astype(np.int64) + (X[:, 1] > 1)
    return X, y, rng.uniform(0, 2, n) * (rng.random(n) > 0.1)  # some rows weigh nothing


def model():
    return distbp.MLP([6, 8, 3], activation="relu", dtype="float64", seed=5)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("options", [
    dict(optimizer="momentum", lr_scale="mean"),
    dict(optimizer="adam", lr_scale="sum", accumulate=2),
    dict(optimizer="adam", lr_scale="mean", shard_optimizer=True),
], ids=["momentum-mean", "adam-accumulate", "adam-sharded"])
def test_p_ranks_with_weights_compute_one_ranks_parameters(options):
    X, y, w = rows()
    many, one = model(), model()
    history = distbp.fit(many, X, y, sample_weight=w, comm=world(), **BASE, **options)
    distbp.fit(one, X, y, sample_weight=w, comm=SerialComm(), **BASE, **options)
    np.testing.assert_allclose(many.flat_params, one.flat_params, rtol=1e-10, atol=1e-12)
    assert all(r["weighted"] for r in history)
    unweighted = model()
    distbp.fit(unweighted, X, y, comm=world(), **BASE, **options)
    assert np.abs(unweighted.flat_params - one.flat_params).max() > 1e-6  # the control: the weights count


@pytest.mark.mpi(min_size=2)
def test_the_exact_mode_with_weights_is_bit_identical_to_one_rank():
    X, y, w = rows()
    many, one = model(), model()
    options = dict(BASE, optimizer="momentum", lr_scale="mean", reproducible=True, micro_batch=4)
    distbp.fit(many, X, y, sample_weight=w, comm=world(), **options)
    distbp.fit(one, X, y, sample_weight=w, comm=SerialComm(), **options)
    assert many.flat_params.tobytes() == one.flat_params.tobytes()


@pytest.mark.mpi(min_size=2)
def test_own_rows_of_weight_two_train_as_twice_the_learning_rate():
    # ∇L doubles with every weight 2, so gradient descent (and momentum, linear in ∇L) takes the steps of twice
    # the learning rate, to the bit: scaling by 2 is exact. Each rank passes its own rows (local rows)
    comm = world()
    X, y, _ = rows(30 + 7 * comm.rank, seed=10 + comm.rank)
    options = dict(BASE, optimizer="momentum", local_rows=True)
    weighted, doubled = model(), model()
    distbp.fit(weighted, X, y, sample_weight=np.full(len(X), 2.0), **options)
    distbp.fit(doubled, X, y, **{**options, "lr": 2 * options["lr"]})
    assert weighted.flat_params.tobytes() == doubled.flat_params.tobytes()
