"""Under MPI: dropout's masks depend on the global row, not the rank that computes it, so p ranks compute one
rank's parameters (float64, to rounding; uneven shards), and the exact mode stays bit-identical to one rank."""

import numpy as np
import pytest

import distbp
from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm

OPTIONS = dict(epochs=2, batch_size=13, optimizer="momentum", lr=0.01, seed=6, scale="none", timeout=60,
               verbose=False, dropout=[0.3, 0.2])


def rows():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((61, 6))
    return X, (X[:, 0] > X[:, 4]).astype(np.int64) + (X[:, 1] > 1)


def net():
    return distbp.MLP([6, 12, 9, 3], activation="relu", dtype="float64", seed=3)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("options", [dict(), dict(accumulate=2), dict(shard_optimizer=True)],
                         ids=["plain", "accumulate", "sharded"])
def test_p_ranks_with_dropout_compute_one_ranks_parameters(options):
    X, y = rows()
    many, one = net(), net()
    distbp.fit(many, X, y, comm=world(), **OPTIONS, **options)
    distbp.fit(one, X, y, comm=SerialComm(), **OPTIONS, **options)
    np.testing.assert_allclose(many.flat_params, one.flat_params, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(min_size=2)
def test_the_exact_mode_with_dropout_is_bit_identical_to_one_rank():
    X, y = rows()
    many, one = net(), net()
    options = dict(OPTIONS, reproducible=True, micro_batch=4)
    distbp.fit(many, X, y, comm=world(), **options)
    distbp.fit(one, X, y, comm=SerialComm(), **options)
    assert many.flat_params.tobytes() == one.flat_params.tobytes()


@pytest.mark.mpi(min_size=2)
def test_ranks_with_their_own_rows_draw_masks_by_their_rows_global_index():
    comm = world()
    X, y = rows()
    mine = np.array_split(np.arange(len(X)), comm.size)[comm.rank]
    model = net()
    history = distbp.fit(model, X[mine], y[mine], local_rows=True, **OPTIONS)
    assert np.isfinite(history[-1]["train_loss"])
    assert len({round(float(v), 12) for v in comm_values(model.flat_params[:5].sum())}) == 1  # one model


def comm_values(value):
    return world().allgather_object(value)
