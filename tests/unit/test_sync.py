"""Gradient-sync strategies: one object per mode, and what the loop may rely on from every one of them.

Serial tests here; tests/mpi/test_sync_mpi.py runs the same properties on 2–4 ranks.
"""

import numpy as np
import pytest

from distbp import config as configuration
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import ConfigError, NonFiniteError
from distbp.sync import factory as sync
from distbp.sync import transports
from distbp.sync.base import GradientSync, layers_with_nonfinite
from distbp.testing import faults
from distbp.train import loop, memory
from distbp.train.setup import setup
from tests.helpers import memcheck

SMALL = "synthetic:rows=300,features=12,classes=3,test=40"

# every mode the factory can build, by its flags (the same list runs on several ranks in test_sync_mpi.py)
# (no key may be "mpi": pytest-mpi takes a test id's words for markers and would skip the case)
MODES = {
    "hierarchical allreduce": dict(allreduce="hier"),
    "hierarchical bfloat16": dict(allreduce="hier", comm_dtype="bfloat16"),
    "ring allreduce": dict(allreduce="ring"),
    "MPI allreduce": dict(allreduce="mpi"),
    "blocking": dict(overlap=False),
    "bfloat16": dict(comm_dtype="bfloat16"),
    "float16": dict(comm_dtype="float16"),
    "accumulate 3": dict(accumulate=3),
    "shard-optimizer adam": dict(shard_optimizer=True, optimizer="adam"),
    "shard-optimizer accumulate 3": dict(shard_optimizer=True, accumulate=3, optimizer="momentum"),
    "reproducible": dict(reproducible=True, micro_batch=16),
    "mse": dict(loss="mse"),
    "momentum": dict(optimizer="momentum"),
}


def config(**overrides) -> Config:
    return validate(Config(**{**dict(data=SMALL, layers=[12, 9, 7, 3], epochs=1, batch_size=40, lr=0.01,
                                     progress="none", timeout=0, bucket_mb=0.001), **overrides}))


def set_up(comm, **overrides):
    """A run ready to train, resumed from its checkpoint when asked: `pos` is where it will start."""
    return setup(config(**overrides), comm)


def train(r):
    """Train a set-up run to its end."""
    loop.fit(r)
    r.watchdog.stop()
    return r


def trained(comm, **overrides):
    return train(set_up(comm, **overrides))


@pytest.mark.parametrize("mode", MODES)
def test_the_memory_estimate_is_exactly_what_a_run_allocates(mode):
    r = trained(SerialComm(), **MODES[mode])
    estimate = memory.per_rank(r.sync)["total"]
    assert estimate == memcheck.allocated_bytes(r, skip=(r.data, r.comm))


@pytest.mark.parametrize("mode", MODES)
def test_the_dry_run_prints_the_estimate_of_the_strategy_the_run_builds(mode, capsys):
    from distbp.cli import dry_run

    cfg = config(**MODES[mode])
    assert dry_run(cfg, SerialComm()) == 0
    printed = capsys.readouterr().out
    r = trained(SerialComm(), **MODES[mode])
    assert f"({memcheck.allocated_bytes(r, skip=(r.data, r.comm))} bytes)" in printed
    assert r.sync.describe() in printed


def test_reproducible_buffers_hold_one_micro_block_not_a_rank_share():
    # the case of the issue: 3 ranks, batch 128, micro-blocks of 32; rank 0 computes 2 blocks, one at a time
    plan = memcheck.plan([40, 64, 7], "float32", 128, 3, reproducible=True, micro_batch=32)
    assert plan.rows_at_once == 32
    assert plan.my_rows(128) == (0, 64)
    counted = memory.per_rank(plan)
    assert counted["allreduce_scratch"] == 8 * plan.shape.n_params  # the int64 sum is counted


@pytest.mark.parametrize("mode", MODES)
def test_nan_in_a_rank_gradient_names_layer_0_in_every_mode(mode, monkeypatch):
    monkeypatch.setattr(faults, "PLAN", {"rank": 0, "step": 2, "kind": "nan"})
    with pytest.raises(NonFiniteError, match=r"step 2.*layer 0 dW"):
        trained(SerialComm(), **MODES[mode])


@pytest.mark.parametrize("mode", ["reproducible", "shard-optimizer adam", "accumulate 3"])
def test_a_resumed_run_continues_with_the_same_bits(mode, tmp_path):
    # float64: the exact sum's fixed-point scale (from the step before) shows in the low bits
    full = trained(SerialComm(), epochs=2, dtype="float64", **MODES[mode])
    trained(SerialComm(), epochs=1, dtype="float64", checkpoint_dir=str(tmp_path), **MODES[mode])
    resumed = set_up(SerialComm(), epochs=2, dtype="float64", checkpoint_dir=str(tmp_path), resume=True,
                     **MODES[mode])
    started = (resumed.pos.epoch, resumed.pos.batch, resumed.pos.step)
    train(resumed)
    assert started == (1, 0, full.history[0]["steps"])  # it went on after epoch 1, the checkpoint's, not from 0
    assert resumed.model.flat_params.tobytes() == full.model.flat_params.tobytes()


def test_the_factory_picks_one_strategy_per_mode():
    picked = {mode: sync.strategy_name(config(**flags)) for mode, flags in MODES.items()}
    assert picked["reproducible"] == "exact"
    assert picked["shard-optimizer adam"] == picked["shard-optimizer accumulate 3"] == "sharded"
    assert {picked[m] for m in ("ring allreduce", "MPI allreduce", "blocking", "bfloat16", "accumulate 3", "mse")} \
        == {"allreduce"}


@pytest.mark.parametrize("flags", [dict(reproducible=True, accumulate=2), dict(shard_optimizer=True, comm_dtype="float16"),
                                   dict(reproducible=True, shard_optimizer=True)])
def test_modes_that_do_not_go_together_are_refused_by_the_factory_rules(flags):
    with pytest.raises(ConfigError, match="conflict"):
        config(**flags)


def test_layers_with_nonfinite_names_weights_and_biases_apart():
    sizes = (3, 2, 4)  # layer 0: W 6 + b 2 = [0, 8); layer 1: W 8 + b 4 = [8, 20)
    assert layers_with_nonfinite(np.array([7, 19]), sizes) == ["layer 0 db", "layer 1 db"]
    assert layers_with_nonfinite(np.array([0, 8]), sizes) == ["layer 0 dW", "layer 1 dW"]
    assert layers_with_nonfinite(np.array([], np.int64), sizes) == []


class WholeGradientSync(GradientSync):
    """A toy mode written inside a test: the whole share in one pass, one blocking allreduce, plain gd."""

    name = "toy"

    def memory(self):
        item = np.dtype(self.shape.dtype).itemsize
        return {"gradients": self.shape.n_params * item, "optimizer_state": 0, "allreduce_scratch": 0}

    def describe(self):
        return "toy: one blocking allreduce of the whole gradient"

    def build(self, comm, model):
        super().build(comm, model)
        self.grad = np.zeros(model.n_params, model.dtype)
        self.steps = 0

    def local_gradient(self, gather, rows, batch_rows):
        X, y, w = gather(rows)  # w: the rows' weights, None without
        loss = self.model.loss_and_grad_into(X, y, self.grad, validate=False, w=w)
        return loss, self.model.count_correct(y, w=w)

    def finish(self):
        self.comm.allreduce_sum(self.grad)

    def all_finite(self):
        return bool(np.isfinite(self.grad).all())

    def nonfinite_layers(self):
        return layers_with_nonfinite(np.flatnonzero(~np.isfinite(self.grad)), self.shape.sizes)

    def apply(self, params, scale):
        params -= self.options.lr * scale * self.grad
        self.steps += 1

    @property
    def optimizer_steps(self):
        return self.steps

    def checkpoint_state(self):
        return {}, {"toy": True}

    def load_checkpoint_state(self, arrays, meta, optimizer_steps):
        assert meta == {"toy": True}
        self.steps = optimizer_steps


def plug_in_the_toy(monkeypatch):
    monkeypatch.setattr(sync, "STRATEGIES", {"toy": (WholeGradientSync, lambda cfg: cfg.optimizer == "gd"),
                                             **sync.STRATEGIES})


def test_a_strategy_defined_in_a_test_plugs_into_the_factory_and_trains(monkeypatch, tmp_path):
    reference = trained(SerialComm(), dtype="float64", epochs=2)
    plug_in_the_toy(monkeypatch)
    toy = trained(SerialComm(), dtype="float64", epochs=1, checkpoint_dir=str(tmp_path))
    assert isinstance(toy.sync, WholeGradientSync)
    toy = trained(SerialComm(), dtype="float64", epochs=2, checkpoint_dir=str(tmp_path), resume=True)
    assert toy.sync.steps == reference.pos.step
    assert np.abs(toy.model.flat_params - reference.model.flat_params).max() < 1e-12
    assert memory.per_rank(toy.sync)["total"] == memcheck.allocated_bytes(toy, skip=(toy.data, toy.comm))


class BlockingTransport(transports.Transport):
    """A toy transport written inside a test: each bucket summed at once by one blocking allreduce."""

    name, label = "toy", " (toy: one blocking allreduce per bucket)"

    def __init__(self, comm, n, dtype, max_bucket=None, codec=None):
        super().__init__(comm, n, dtype, max_bucket, codec)
        self.started = 0

    def start(self, buf):
        self.comm.allreduce_sum(buf)
        self.started += 1


def plug_in_the_toy_transport(monkeypatch):
    """Register BlockingTransport as "toy" and let --allreduce name it."""
    monkeypatch.setitem(transports.TRANSPORTS, "toy", BlockingTransport)
    monkeypatch.setitem(configuration.CHOICES, "allreduce", (*configuration.CHOICES["allreduce"], "toy"))


def test_a_transport_defined_in_a_test_plugs_into_the_registry_and_trains(monkeypatch):
    reference = trained(SerialComm(), dtype="float64", epochs=2, allreduce="mpi")
    plug_in_the_toy_transport(monkeypatch)
    toy = trained(SerialComm(), dtype="float64", epochs=2, allreduce="toy")
    assert toy.sync.algorithm == "toy" and isinstance(toy.sync.reducer.transport, BlockingTransport)
    assert toy.sync.reducer.transport.started >= toy.sync.reducer.stats["calls"] > 1  # bucket by bucket
    # one rank sums nothing: the same bits as MPI's transport
    assert toy.model.flat_params.tobytes() == reference.model.flat_params.tobytes()
    assert memory.per_rank(toy.sync)["total"] == memcheck.allocated_bytes(toy, skip=(toy.data, toy.comm))


def test_an_unknown_transport_name_is_refused():
    with pytest.raises(ValueError, match="algorithm must be one of 'mpi', 'ring', 'hier'"):
        transports.transport_class("tree")


def test_configuration_and_its_mode_rules_need_no_communication_module():
    import subprocess
    import sys

    code = ("import sys\nfrom distbp.config import Config, validate\nvalidate(Config(reproducible=True))\n"
            "print(sorted(m for m in sys.modules if m in ('distbp.comm', 'distbp.train', 'mpi4py.MPI')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
