"""Gradient-sync strategies on several ranks: the dry run counts what every rank allocates, and a strategy
written inside a test trains data-parallel with no change to the training loop.

Run by launch/test under MPI on 2, 3 and 4 ranks.
"""

import re

import numpy as np
import pytest

from distbp.comm.mpi import world
from distbp.comm.serial import SerialComm
from distbp.train import memory
from tests.helpers import memcheck
from tests.unit.test_sync import MODES, BlockingTransport, config, plug_in_the_toy, plug_in_the_toy_transport, trained


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", MODES)
def test_every_rank_allocates_what_its_strategy_counts(mode):
    r = trained(world(), **MODES[mode])
    assert memory.per_rank(r.sync)["total"] == memcheck.allocated_bytes(r, skip=(r.data, r.comm))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("mode", MODES)
def test_the_dry_run_total_is_the_largest_allocation_of_any_rank(mode, capsys):
    from distbp.cli import dry_run

    comm = world()
    assert dry_run(config(**MODES[mode]), comm) == 0
    printed = capsys.readouterr().out
    r = trained(comm, **MODES[mode])
    largest = comm.max_scalar(memcheck.allocated_bytes(r, skip=(r.data, r.comm)))
    if comm.is_root:
        assert int(re.search(r"\((\d+) bytes\)", printed).group(1)) == largest


@pytest.mark.mpi(min_size=2)
def test_the_reproducible_dry_run_of_the_issue_counts_one_micro_block(capsys):
    # 3 ranks (or p), batch 128, micro-blocks of 32: buffers of 32 rows, and the exact sum's int64 buffer counted
    from distbp.cli import dry_run

    comm = world()
    flags = dict(data="synthetic:rows=3000,features=40,classes=7", layers=[40, 64, 7], batch_size=128,
                 reproducible=True, micro_batch=32)
    dry_run(config(**flags), comm)
    printed = capsys.readouterr().out
    r = trained(comm, **flags)
    assert r.batch.X.shape[0] == 32
    largest = comm.max_scalar(memcheck.allocated_bytes(r, skip=(r.data, r.comm)))
    if comm.is_root:
        assert "32 rows at once" in printed
        assert int(re.search(r"\((\d+) bytes\)", printed).group(1)) == largest


@pytest.mark.mpi(min_size=2)
def test_a_toy_strategy_trains_data_parallel_without_touching_the_loop(monkeypatch):
    comm = world()
    one = trained(SerialComm(), dtype="float64", epochs=2, batch_size=23)
    plug_in_the_toy(monkeypatch)
    toy = trained(comm, dtype="float64", epochs=2, batch_size=23, check_every=1)
    assert toy.sync.name == "toy"
    assert np.abs(toy.model.flat_params - one.model.flat_params).max() < 1e-10


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("overlap", [True, False])
def test_a_toy_transport_sums_the_buckets_like_mpis_without_touching_the_reducer(monkeypatch, overlap):
    comm = world()
    mpi = trained(comm, dtype="float64", epochs=2, allreduce="mpi", overlap=overlap)
    plug_in_the_toy_transport(monkeypatch)
    toy = trained(comm, dtype="float64", epochs=2, allreduce="toy", overlap=overlap)
    assert isinstance(toy.sync.reducer.transport, BlockingTransport)
    assert "(toy: one blocking allreduce per bucket)" in toy.sync.describe()
    # the same sums, added by MPI in possibly another order: equal up to rounding
    assert np.abs(toy.model.flat_params - mpi.model.flat_params).max() < 1e-10
    everyone = comm.allgather_object(toy.model.flat_params.copy())
    assert all(np.array_equal(everyone[0], p) for p in everyone)
