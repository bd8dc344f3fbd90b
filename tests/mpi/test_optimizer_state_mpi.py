"""Under MPI: optimizer_state= carries a sharded optimizer too (gathered, then every rank keeps its part), so
chunked calls on p ranks train as one run over the chunks on p ranks."""

import numpy as np
import pytest

import distbp
from distbp.comm.mpi import world

CHUNK = 14


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shard", [False, True], ids=["replicated", "sharded"])
def test_chunked_calls_on_p_ranks_train_as_one_run(shard):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((42, 6))
    y = (X[:, 0] > X[:, 2]).astype(np.int64)
    options = dict(optimizer="adam", lr=0.01, scale="none", shuffle=False, timeout=60, verbose=False, epochs=1,
                   batch_size=CHUNK, shard_optimizer=shard, comm=world())
    one_run = distbp.MLP([6, 9, 2], dtype="float64", seed=2)
    distbp.fit(one_run, X, y, **options)
    chunked, state = distbp.MLP([6, 9, 2], dtype="float64", seed=2), {}
    for start in range(0, len(X), CHUNK):
        distbp.fit(chunked, X[start:start + CHUNK], y[start:start + CHUNK], optimizer_state=state, **options)
    assert chunked.flat_params.tobytes() == one_run.flat_params.tobytes()
    assert state["steps"] == 3 and all(a.shape == (chunked.n_params,) for a in state["arrays"].values())
