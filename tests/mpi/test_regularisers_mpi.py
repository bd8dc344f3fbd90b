"""Weight decay, clipping, LARS and LAMB are data-parallel exact: p ranks train what one rank trains,
with the optimizer state replicated or sharded (parts that cut through layers), and the exact mode
stays bit-identical.

Run by launch/test under MPI on 2, 3 and 4 ranks:
    launch/local -n 2 --threads 1 python -m pytest -p no:cacheprovider --with-mpi -m mpi -x -q tests/mpi/test_regularisers_mpi.py
Each rank also trains the 1-rank reference itself (SerialComm), so the comparison needs no files.
"""

import numpy as np
import pytest

from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.train import loop
from distbp.train.setup import setup

SMALL = "synthetic:rows=230,features=10,classes=3,test=30"
LAYERS = [10, 7, 3]  # 101 parameters, a prime: the parts of 2, 3 and 4 ranks cut through layers, W and b

# (no key may be "mpi": pytest-mpi takes a test id's words for markers)
REGULARISED = {
    "lars": dict(optimizer="lars", lr=0.5, trust=0.02, weight_decay=1e-3),
    "lamb": dict(optimizer="lamb", lr=0.01, weight_decay=0.01),
    "lamb decaying biases": dict(optimizer="lamb", lr=0.01, weight_decay=0.01, decay_biases=True),
    "gd weight decay": dict(optimizer="gd", weight_decay=0.05),
    "momentum weight decay": dict(optimizer="momentum", weight_decay=0.05, decay_biases=True),
    "adamw": dict(optimizer="adam", weight_decay=0.05),
    "clipping": dict(optimizer="momentum", clip_grad_norm=1.0),
    "lars clipping": dict(optimizer="lars", lr=0.5, trust=0.02, weight_decay=1e-3, clip_grad_norm=1.0),
}


def train_on(comm, **overrides):
    cfg = validate(Config(**{**dict(data=SMALL, layers=LAYERS, dtype="float64", epochs=2, batch_size=20, lr=0.01,
                                    progress="none", timeout=60, check_every=1), **overrides}))
    r = setup(cfg, comm)
    loop.fit(r)
    r.watchdog.stop()
    return r


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", REGULARISED)
def test_p_ranks_match_one_rank(mode):
    p_run = train_on(world(), **REGULARISED[mode])
    one = train_on(SerialComm(), **REGULARISED[mode])
    assert np.abs(p_run.model.flat_params - one.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", REGULARISED)
def test_sharded_optimizer_state_gives_the_parameters_of_the_replicated_one(mode):
    comm = world()
    sharded = train_on(comm, shard_optimizer=True, **REGULARISED[mode])
    assert sharded.sync.name == "sharded"
    assert sharded.model.n_params % comm.size != 0  # uneven parts: they cut through layers
    replicated = train_on(SerialComm(), **REGULARISED[mode])
    assert np.abs(sharded.model.flat_params - replicated.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("shard_optimizer", [False, True])
def test_every_rank_reports_the_norm_of_one_rank(shard_optimizer):
    comm = world()
    from mpi4py import MPI

    r = train_on(comm, shard_optimizer=shard_optimizer, **REGULARISED["lars clipping"])
    one = train_on(SerialComm(), **REGULARISED["lars clipping"])
    everyone = MPI.COMM_WORLD.allgather(r.sync.stats["grad_norm"])
    assert all(norm == everyone[0] for norm in everyone)
    assert everyone[0] == pytest.approx(one.sync.stats["grad_norm"], rel=1e-10)
    assert r.sync.stats["clipped_steps"] == one.sync.stats["clipped_steps"] > 0


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", ["lars clipping", "lamb decaying biases"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reproducible_mode_stays_bit_identical_to_one_rank(mode, dtype):
    opts = dict(REGULARISED[mode], reproducible=True, micro_batch=4, dtype=dtype)
    p_run = train_on(world(), **opts)
    one = train_on(SerialComm(), **opts)
    assert p_run.model.flat_params.tobytes() == one.model.flat_params.tobytes()
