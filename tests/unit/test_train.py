"""The training loop in one process: sums are exact, the update is the seed's, checkpoints resume exactly."""

import json

import numpy as np
import pytest

from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import ConfigError, NonFiniteError
from distbp.testing import faults
from distbp.train import loop, runstate
from distbp.train.setup import setup

SMALL = "synthetic:rows=240,features=12,classes=3,test=40"


def set_up(**overrides):
    """A run ready to train, resumed from its checkpoint when asked: `pos` is where it will start."""
    cfg = validate(Config(**{**dict(data=SMALL, layers=[12, 8, 3], dtype="float64", epochs=2, batch_size=32,
                                    lr=0.01, progress="none", timeout=0), **overrides}))
    return setup(cfg, SerialComm())


def train(r):
    """Train a set-up run to its end."""
    loop.fit(r)
    r.watchdog.stop()
    return r


def run(tmp_path=None, **overrides):
    return train(set_up(**overrides))


def test_one_step_is_theta_minus_eta_times_summed_gradient():
    r = run(epochs=1, batch_size=240, lr=0.05)  # one global batch = the whole training set in one step
    cfg = r.cfg
    fresh = setup(cfg, SerialComm())
    theta0 = fresh.model.flat_params.copy()
    X = np.empty((fresh.data.train.n_rows, 12))
    y = np.empty(fresh.data.train.n_rows, np.int64)
    from distbp.data.shard import epoch_permutation
    rows = epoch_permutation(fresh.data.train.n_rows, cfg.seed, 0)
    fresh.data.train.gather(rows, X, y)
    _, grads = fresh.model.loss_and_grad(X, y)
    g = np.concatenate([np.concatenate([dW.ravel(), db]) for dW, db in grads])
    np.testing.assert_allclose(r.model.flat_params, theta0 - 0.05 * g, rtol=1e-12, atol=1e-14)


def test_mean_scaling_divides_the_learning_rate_by_the_global_batch_rows():
    a = run(epochs=1, batch_size=240, lr=0.05 / 240, lr_scale="sum")
    b = run(epochs=1, batch_size=240, lr=0.05, lr_scale="mean")
    np.testing.assert_allclose(a.model.flat_params, b.model.flat_params, rtol=1e-12)


def test_last_partial_batch_is_trained_on_not_dropped():
    r = run(epochs=1, batch_size=100)  # 216 training rows → 100, 100, 16
    assert r.pos.step == 3
    assert r.history[0]["steps"] == 3


def test_metrics_file_has_one_line_per_epoch(tmp_path):
    path = tmp_path / "m.jsonl"
    run(epochs=3, metrics=str(path))
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "test_accuracy", "samples_per_s", "compute_s", "comm_s"):
        assert key in lines[0]
    assert 0 <= lines[-1]["test_accuracy"] <= 1


def test_save_writes_W_and_b_per_layer(tmp_path):
    r = run(epochs=1)
    path = tmp_path / "p.npz"
    runstate.save_params(r, str(path))
    with np.load(path) as f:  # a model file: W0, b0, W1, b1 as always, beside its description
        assert {"W0", "W1", "b0", "b1"} <= set(f.files)
        assert not any(name.startswith(("W", "b")) and name[1:].isdigit() and int(name[1:]) > 1 for name in f.files)
        np.testing.assert_array_equal(f["W1"], r.model.params[1][0])


def test_resume_from_a_mid_run_checkpoint_is_bit_identical(tmp_path):
    full = run(epochs=3, optimizer="adam")
    d = tmp_path / "ck"
    run(epochs=3, optimizer="adam", checkpoint_dir=str(d), checkpoint_steps=5, keep_checkpoints=50)
    # pretend the run died after step 10: keep only the checkpoints up to it
    from distbp.train.checkpoint import list_checkpoints
    for p in list_checkpoints(d):
        if int(p.stem.split("-")[1]) > 10:
            p.unlink()
    resumed = set_up(epochs=3, optimizer="adam", checkpoint_dir=str(d), resume=True)
    started = (resumed.pos.epoch, resumed.pos.batch, resumed.pos.step)
    train(resumed)
    # it went on after step 10, the checkpoint's: the 3rd batch of epoch 2 (8 batches an epoch), not step 0
    assert started == (1, 2, 10)
    assert resumed.pos.step == full.pos.step
    np.testing.assert_array_equal(resumed.model.flat_params, full.model.flat_params)
    np.testing.assert_array_equal(resumed.sync.optimizer.m, full.sync.optimizer.m)


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    d = tmp_path / "ck"
    run(epochs=1, checkpoint_dir=str(d))
    with pytest.raises(Exception, match="layers"):
        run(epochs=1, layers=[12, 5, 3], checkpoint_dir=str(d), resume=True)


def test_nonfinite_gradient_stops_with_step_and_layer(monkeypatch):
    monkeypatch.setattr(faults, "PLAN", {"rank": 0, "step": 2, "kind": "nan"})
    with pytest.raises(NonFiniteError, match=r"step 2.*layer 0 dW"):
        run(epochs=1)


def test_skip_nonfinite_skips_and_counts_the_update(monkeypatch):
    monkeypatch.setattr(faults, "PLAN", {"rank": 0, "step": 2, "kind": "nan"})
    r = run(epochs=1, skip_nonfinite=True)
    assert r.pos.skipped == 1
    assert r.history[0]["skipped_nonfinite"] == 1
    assert np.isfinite(r.model.flat_params).all()


def test_learning_rate_too_high_is_reported_as_nonfinite_not_silently_trained_on():
    with pytest.raises(NonFiniteError, match="non-finite"):
        run(epochs=2, loss="mse", lr=1e6, activation="linear")


@pytest.mark.parametrize("overrides,words", [
    (dict(lr=-1.0), "--lr must be positive"),
    (dict(batch_size=0), "--batch-size must be positive"),
    (dict(epochs=0), "--epochs must be positive"),
    (dict(optimizer="sgdx"), "--optimizer must be one of"),
    (dict(resume=True), "--resume needs --checkpoint-dir"),
    (dict(reproducible=True, comm_dtype="bfloat16"), "conflict"),
    (dict(allreduce="ring", shard_optimizer=True), "conflict"),
    (dict(allreduce="nccl"), "--allreduce must be one of"),
    (dict(layers=[12, 0, 3]), "positive sizes"),
    (dict(test_fraction=1.5), "--test-fraction"),
])
def test_nonsense_configuration_is_a_clear_error(overrides, words):
    with pytest.raises(ConfigError, match=words):
        validate(Config(**overrides))


def test_the_ring_takes_compressed_gradients_and_auto_chooses_as_without_compression():
    from distbp.sync.base import Layout
    from distbp.sync.factory import allreduce_algorithm

    one_node, two_nodes = Layout(0, 2, node_sizes=(2,)), Layout(0, 2, node_sizes=(1, 1))
    ring = validate(Config(allreduce="ring", comm_dtype="bfloat16"))  # no longer a conflict
    assert allreduce_algorithm(ring, two_nodes) == "ring"
    for layout in (one_node, two_nodes):
        assert allreduce_algorithm(validate(Config(comm_dtype="float16")), layout) == \
            allreduce_algorithm(validate(Config()), layout)
    assert allreduce_algorithm(validate(Config(comm_dtype="float16")), two_nodes) == "mpi"  # across nodes MPI's own


def test_auto_takes_the_hierarchical_allreduce_on_one_node_and_on_even_nodes_and_hier_refuses_uneven_nodes():
    from distbp.errors import ConfigError
    from distbp.sync.base import Layout
    from distbp.sync.factory import allreduce_algorithm

    auto, hier = validate(Config()), validate(Config(allreduce="hier"))
    assert allreduce_algorithm(auto, Layout(0, 3, node_sizes=(3,))) == "hier"
    assert allreduce_algorithm(auto, Layout(0, 4, node_sizes=(2, 2))) == "hier"  # node sums, Bruck across nodes
    assert allreduce_algorithm(auto, Layout(0, 3, node_sizes=(2, 1))) == "mpi"  # uneven nodes: MPI's own
    assert allreduce_algorithm(auto, Layout(0, 4, node_sizes=(1, 1, 1, 1))) == "mpi"  # one rank per node: MPI's own
    assert allreduce_algorithm(hier, Layout(0, 4, node_sizes=(2, 2))) == "hier"
    with pytest.raises(ConfigError, match="same number of ranks on every node; this job has 2, 1"):
        allreduce_algorithm(hier, Layout(0, 3, node_sizes=(2, 1)))


@pytest.mark.parametrize("overrides,words", [
    (dict(layers=[10, 8, 3]), "12 features"),
    (dict(layers=[12, 8, 2]), "3 classes"),
    (dict(data="synthetic:rows=1,features=12,classes=3,test=0"), "rows"),
])
def test_model_that_does_not_fit_the_data_is_a_clear_error(overrides, words):
    from distbp.errors import DistbpError
    with pytest.raises(DistbpError, match=words):
        run(**overrides)
