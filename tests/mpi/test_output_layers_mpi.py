"""Under MPI, every new output layer keeps the layout guarantees: p ranks compute one rank's parameters
(float64, to rounding, uneven shards) and the exact mode (--reproducible) is bit-identical to one rank."""

import numpy as np
import pytest

import distbp
from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm

OPTIONS = dict(epochs=2, batch_size=13, optimizer="adam", lr=0.01, seed=6, scale="none", timeout=60, verbose=False)
PAIRS = [("binary_cross_entropy", "sigmoid"), ("mse", "sigmoid"), ("mse", "tanh"), ("mse", "relu"),
         ("mse", "softmax")]


def rows(loss: str):
    """61 rows (uneven shards on 2, 3 and 4 ranks) and their targets: 0/1 labels for BCE, values for mse."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((61, 6))
    labels = np.stack([X[:, 0] > X[:, 4], X[:, 1] > 0.5, X[:, 2] + X[:, 3] > 0], axis=1).astype(np.float64)
    return X, labels if loss == "binary_cross_entropy" else 0.8 * labels + 0.1 * np.tanh(X[:, :3])


def net(loss: str, output_activation: str):
    return distbp.MLP([6, 12, 3], activation="tanh", loss=loss, dtype="float64", seed=3,
                      output_activation=output_activation)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_p_ranks_compute_one_ranks_parameters(loss, output_activation):
    X, y = rows(loss)
    many, one = net(loss, output_activation), net(loss, output_activation)
    distbp.fit(many, X, y, comm=world(), **OPTIONS)
    distbp.fit(one, X, y, comm=SerialComm(), **OPTIONS)
    assert not np.array_equal(many.flat_params, net(loss, output_activation).flat_params)  # it trained
    np.testing.assert_allclose(many.flat_params, one.flat_params, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("loss,output_activation", PAIRS)
def test_the_exact_mode_is_bit_identical_to_one_rank(loss, output_activation):
    X, y = rows(loss)
    many, one = net(loss, output_activation), net(loss, output_activation)
    options = dict(OPTIONS, reproducible=True, micro_batch=4)
    distbp.fit(many, X, y, comm=world(), **options)
    distbp.fit(one, X, y, comm=SerialComm(), **options)
    assert many.flat_params.tobytes() == one.flat_params.tobytes()
