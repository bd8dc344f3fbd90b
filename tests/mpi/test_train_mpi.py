"""Data parallelism is exact: p ranks train the same parameters as one rank.

Run by launch/test under MPI on 2, 3 and 4 ranks:
    launch/local -n 3 python -m pytest --with-mpi -m mpi tests/mpi/test_train_mpi.py
Each rank also trains the 1-rank reference itself (SerialComm), so the comparison needs no files.
"""

import numpy as np
import pytest

from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import NonFiniteError
from distbp.sync import factory as sync
from distbp.testing import faults
from distbp.train import loop
from distbp.train.setup import layout_of, setup
from tests.helpers import memcheck

SMALL = "synthetic:rows=230,features=10,classes=3,test=30"


def set_up_on(comm, **overrides):
    """A run ready to train, resumed from its checkpoint when asked: `pos` is where it will start."""
    cfg = validate(Config(**{**dict(data=SMALL, layers=[10, 9, 3], dtype="float64", epochs=2, lr=0.01,
                                    optimizer="momentum", progress="none", timeout=60, check_every=1),
                             **overrides}))
    return setup(cfg, comm)


def train(r):
    """Train a set-up run to its end."""
    loop.fit(r)
    r.watchdog.stop()
    return r


def train_on(comm, **overrides):
    return train(set_up_on(comm, **overrides))


def position(r) -> tuple[int, int, int]:
    """(epoch, batch, step): where a run stands (a set-up one: where it will start)."""
    return r.pos.epoch, r.pos.batch, r.pos.step


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("batch_size", [32, 7, 1])  # divisible or not by p, and smaller than p
@pytest.mark.parametrize("allreduce", ["hier", "ring", "mpi"])
def test_p_ranks_match_one_rank(batch_size, allreduce):
    comm = world()
    if batch_size == 1 and comm.size > 3:
        batch_size = 2  # still smaller than p, keeps the step count low
    p_run = train_on(comm, batch_size=batch_size, allreduce=allreduce)
    assert p_run.sync.algorithm == allreduce
    one = train_on(SerialComm(), batch_size=batch_size)
    assert np.abs(p_run.model.flat_params - one.model.flat_params).max() < 1e-10
    assert p_run.history[-1]["train_loss"] == pytest.approx(one.history[-1]["train_loss"], rel=1e-9)
    assert p_run.history[-1]["test_accuracy"] == pytest.approx(one.history[-1]["test_accuracy"])


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("allreduce", ["ring", "mpi"])
def test_all_ranks_hold_identical_parameters_after_every_step(allreduce):
    comm = world()
    # check_every=1 compares a checksum of the parameters across ranks after every step and raises if they differ
    r = train_on(comm, batch_size=13, dtype="float32", optimizer="adam", check_every=1, allreduce=allreduce)
    from mpi4py import MPI
    everyone = MPI.COMM_WORLD.allgather(r.model.flat_params.tobytes())
    assert all(b == everyone[0] for b in everyone)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overlap,bucket_mb", [(True, 0.0005), (False, 4.0)])
@pytest.mark.parametrize("allreduce", ["ring", "mpi"])
def test_overlapped_buckets_and_one_blocking_allreduce_agree(overlap, bucket_mb, allreduce):
    comm = world()
    r = train_on(comm, batch_size=16, overlap=overlap, bucket_mb=bucket_mb, epochs=1, allreduce=allreduce)
    one = train_on(SerialComm(), batch_size=16, epochs=1)
    assert np.abs(r.model.flat_params - one.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
def test_auto_picks_the_same_transport_on_one_node_for_compressed_gradients():
    comm = world()
    layout = layout_of(comm)
    assert layout.single_node  # the test jobs share one node
    plain = sync.allreduce_algorithm(validate(Config(data=SMALL)), layout)
    assert plain != "mpi"  # distbp's own transport on one node
    assert sync.allreduce_algorithm(validate(Config(data=SMALL, comm_dtype="bfloat16")), layout) == plain


@pytest.mark.mpi(min_size=2)
def test_memory_estimate_counts_the_ring_scratch_a_run_allocates():
    comm = world()
    bucket = 1000 * 8  # bytes: several buckets for this model
    r = train_on(comm, batch_size=16, epochs=1, allreduce="ring", bucket_mb=bucket / (1 << 20))
    est = memcheck.per_rank_bytes(r.cfg.layers, r.cfg.dtype, 16, comm.size, "momentum", ring_bucket_bytes=bucket)
    assert est["allreduce_scratch"] == r.sync.reducer.transport.ring.scratch.nbytes > 0


@pytest.mark.mpi(min_size=2)
def test_memory_estimate_counts_the_compressed_rings_wire_and_scratch():
    comm = world()
    bucket = 1000 * 8  # bytes: several buckets for this model
    r = train_on(comm, batch_size=16, epochs=1, allreduce="ring", comm_dtype="bfloat16", bucket_mb=bucket / (1 << 20))
    est = memcheck.per_rank_bytes(r.cfg.layers, r.cfg.dtype, 16, comm.size, "momentum", ring_bucket_bytes=bucket,
                                comm_dtype="bfloat16")
    ring = r.sync.reducer.transport.ring
    # uint16 words: a wire of the largest bucket and a scratch of its ceil(1/p) share; no per-bucket copies
    assert ring.wire.dtype == ring.scratch.dtype == np.uint16
    assert est["allreduce_scratch"] == ring.nbytes == ring.wire.nbytes + ring.scratch.nbytes > 0


@pytest.mark.mpi(min_size=2)
def test_resume_on_a_different_rank_count_continues_correctly(tmp_path_factory):
    comm = world()
    from mpi4py import MPI
    d = MPI.COMM_WORLD.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    # one rank trains 1 epoch and checkpoints; p ranks resume for the second epoch
    if comm.rank == 0:
        train_on(SerialComm(), batch_size=16, epochs=1, checkpoint_dir=d)
    comm.barrier()
    resumed = set_up_on(comm, batch_size=16, epochs=2, checkpoint_dir=d, resume=True)
    started = position(resumed)
    train(resumed)
    straight = train_on(SerialComm(), batch_size=16, epochs=2)
    assert started == (1, 0, straight.history[0]["steps"])  # it went on after epoch 1, the checkpoint's
    assert resumed.pos.step == straight.pos.step
    assert np.abs(resumed.model.flat_params - straight.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reproducible_mode_is_bit_identical_to_one_rank(dtype):
    comm = world()
    opts = dict(batch_size=50, micro_batch=8, dtype=dtype, reproducible=True, optimizer="adam")
    p_run = train_on(comm, **opts)
    one = train_on(SerialComm(), **opts)
    assert p_run.model.flat_params.tobytes() == one.model.flat_params.tobytes()


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("accumulate", [2, 3])
def test_gradient_accumulation_equals_the_plain_run(accumulate):
    comm = world()
    acc = train_on(comm, batch_size=20, accumulate=accumulate, optimizer="adam")
    plain = train_on(SerialComm(), batch_size=20, optimizer="adam")
    assert np.abs(acc.model.flat_params - plain.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("optimizer,overlap,bucket_mb", [("gd", True, 4.0), ("momentum", False, 4.0),
                                                         ("adam", True, 0.0003)])
def test_sharded_optimizer_equals_the_plain_run(optimizer, overlap, bucket_mb):
    comm = world()
    # tiny buckets: several buckets, each reduce-scattered to the ranks owning pieces of it
    sharded = train_on(comm, batch_size=20, optimizer=optimizer, shard_optimizer=True, accumulate=2,
                       overlap=overlap, bucket_mb=bucket_mb)
    plain = train_on(SerialComm(), batch_size=20, optimizer=optimizer)
    assert np.abs(sharded.model.flat_params - plain.model.flat_params).max() < 1e-10
    if optimizer == "adam":
        # each rank holds only its part of the state
        n = sharded.model.n_params
        assert sharded.sync.optimizer.state_arrays()["m"].size <= -(-n // comm.size)


@pytest.mark.mpi(min_size=2)
def test_sharded_checkpoints_resume_bit_exact_on_the_same_rank_count_and_correctly_on_one(tmp_path_factory):
    comm = world()
    from mpi4py import MPI
    d = MPI.COMM_WORLD.bcast(str(tmp_path_factory.mktemp("ck")) if comm.rank == 0 else None)
    opts = dict(batch_size=16, optimizer="adam", shard_optimizer=True)
    full = train_on(comm, epochs=2, **opts)
    train_on(comm, epochs=1, checkpoint_dir=d, **opts)  # checkpoint after epoch 1
    after_epoch_1 = (1, 0, full.history[0]["steps"])  # where a resumed run goes on
    if comm.rank == 0:
        # the checkpoint holds the whole optimizer state: one unsharded rank continues it (before p ranks
        # resume and overwrite the directory's latest checkpoint with epoch 2)
        import shutil
        # (not the watchdogs' heartbeats, which other ranks may still be writing)
        shutil.copytree(d, d + "-one", ignore=shutil.ignore_patterns(".heartbeat"))
        one = set_up_on(SerialComm(), epochs=2, checkpoint_dir=d + "-one", resume=True, batch_size=16,
                        optimizer="adam")
        one_started = position(one)
        train(one)
    comm.barrier()
    resumed = set_up_on(comm, epochs=2, checkpoint_dir=d, resume=True, **opts)
    started = position(resumed)
    train(resumed)
    assert started == after_epoch_1
    assert resumed.model.flat_params.tobytes() == full.model.flat_params.tobytes()
    if comm.rank == 0:  # checked after the ranks' last collective, so that a failure here leaves none waiting
        assert one_started == after_epoch_1
        assert one.pos.step == full.pos.step
        assert np.abs(one.model.flat_params - full.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
def test_sharded_nonfinite_gradient_names_the_layer_on_every_rank(monkeypatch):
    comm = world()
    monkeypatch.setattr(faults, "PLAN", {"rank": comm.size - 1, "step": 1, "kind": "nan"})
    with pytest.raises(NonFiniteError, match=r"step 1.*layer 0 dW"):
        train_on(comm, batch_size=16, shard_optimizer=True)


BF16_MARGIN = 0.02  # held-out accuracy: bfloat16 on the wire within 2 points of float32 (README, compression)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("allreduce", ["ring", "mpi"])
def test_bfloat16_on_the_wire_trains_to_the_float32_accuracy(allreduce):
    # digits: 1617 training rows, 180 held out; each rank's 16-bit words are summed with rounding at every hop
    flags = dict(data="digits", layers=[64, 32, 10], dtype="float32", epochs=8, batch_size=64, lr=0.002,
                 allreduce=allreduce)
    plain = train_on(world(), **flags)
    compressed = train_on(world(), comm_dtype="bfloat16", **flags)
    assert plain.history[-1]["test_accuracy"] > 0.85  # a trained model, not two equally bad ones
    assert abs(compressed.history[-1]["test_accuracy"] - plain.history[-1]["test_accuracy"]) <= BF16_MARGIN
