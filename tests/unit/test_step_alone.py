"""A run alone (one rank, no --trace) takes the loop's shorter step (issue 31): the strategy's calls without the
verdict's sums over ranks and the instruments' contexts. It is the same step: the same bits, records, skips and
errors as the step that ranks take together, in every strategy and option that one rank can run."""

import numpy as np
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import NonFiniteError
from distbp.testing import faults
from distbp.train import loop
from distbp.train.run import Run
from distbp.train.setup import setup

DATA = "synthetic:rows=230,features=9,classes=3,test=30"
BASE = dict(data=DATA, layers=[9, 16, 3], dtype="float64", epochs=2, batch_size=24, lr=0.02, progress="none",
            timeout=0, seed=5)


def trained(together: bool, monkeypatch, **overrides):
    """A run trained to its end; together=True makes it take the ranks' step (Run.alone False) as on p ranks."""
    with monkeypatch.context() as m:
        if together:
            m.setattr(Run, "alone", property(lambda self: False))
        r = setup(validate(Config(**{**BASE, **overrides})), SerialComm())
        try:
            loop.fit(r)
        finally:
            r.watchdog.stop()
            r.sync.close()
    return r


def same_training(a: Run, b: Run) -> None:
    assert a.model.flat_params.tobytes() == b.model.flat_params.tobytes()
    drop = ("time_s", "samples_per_s", "compute_s", "comm_s", "data_s", "exposed_comm_s", "overlap_s")
    records = [[{k: v for k, v in rec.items() if k not in drop and not k.endswith("_s")} for rec in r.history]
               for r in (a, b)]
    assert repr(records[0]) == repr(records[1])  # repr: a skipped step's NaN loss equals itself
    assert (a.pos.step, a.pos.skipped, a.pos.epoch) == (b.pos.step, b.pos.skipped, b.pos.epoch)


@pytest.mark.parametrize("overrides", [
    {},
    dict(optimizer="adam", lr=1e-2, lr_scale="mean", dtype="float32"),
    dict(optimizer="momentum", lr_schedule="cosine", warmup_steps=3),
    dict(optimizer="lamb", lr=1e-2, weight_decay=1e-3, clip_grad_norm=0.5),
    dict(accumulate=3, optimizer="adam", lr=1e-2),
    dict(shard_optimizer=True, optimizer="adam", lr=1e-2),
    dict(reproducible=True),
    dict(dropout=[0.2], optimizer="adam", lr=1e-2),
    dict(eval_every=3),  # the loop's general path between steps, the step alone inside it
    dict(loss="mse", activation="tanh"),
])
def test_the_step_alone_trains_the_bits_and_records_of_the_ranks_step(monkeypatch, overrides):
    same_training(trained(False, monkeypatch, **overrides), trained(True, monkeypatch, **overrides))


def test_weighted_rows_give_the_same_bits_alone(monkeypatch):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((150, 9))
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
    w = rng.uniform(0.0, 3.0, 150)
    fits = []
    for together, weights in ((False, w), (True, w), (False, None)):
        with monkeypatch.context() as m:
            if together:
                m.setattr(Run, "alone", property(lambda self: False))
            model = distbp.MLP([9, 16, 3], activation="relu", dtype="float64", seed=0)
            history = distbp.fit(model, X, y, sample_weight=weights, epochs=2, batch_size=32, lr=0.05, threads=1,
                                 verbose=False, comm=SerialComm(), seed=2, test_fraction=0.0)
        fits.append((model, history))
    assert fits[0][0].flat_params.tobytes() == fits[1][0].flat_params.tobytes()
    assert [h["train_loss"] for h in fits[0][1]] == [h["train_loss"] for h in fits[1][1]]
    assert fits[0][1][-1]["weighted"] and fits[0][1][-1]["train_loss"] != fits[2][1][-1]["train_loss"]


def test_a_run_alone_never_sums_over_ranks_and_a_traced_one_does(monkeypatch, tmp_path):
    calls = []
    real = loop.agreed_totals
    monkeypatch.setattr(loop, "agreed_totals", lambda *a, **k: calls.append(1) or real(*a, **k))
    alone = trained(False, monkeypatch)
    assert calls == [] and alone.pos.step == 2 * -(-alone.data.train.n_rows // 24) > 0
    trained(False, monkeypatch, trace=str(tmp_path / "t.json"))
    assert len(calls) == alone.pos.step


def test_the_step_alone_times_data_and_compute_and_waits_for_no_rank(monkeypatch):
    r = trained(False, monkeypatch)
    assert all(rec["data_s"] > 0 and rec["compute_s"] > 0 and rec["comm_s"] == 0 for rec in r.history)


def test_a_nonfinite_gradient_alone_stops_or_is_skipped_as_on_ranks(monkeypatch):
    monkeypatch.setattr(faults, "PLAN", {"rank": 0, "step": 2, "kind": "nan"})
    messages = []
    for together in (False, True):
        with pytest.raises(NonFiniteError, match=r"step 2.*layer 0 dW") as e:
            trained(together, monkeypatch)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    skipped = [trained(together, monkeypatch, skip_nonfinite=True) for together in (False, True)]
    same_training(*skipped)
    assert skipped[0].pos.skipped == 1 and np.isfinite(skipped[0].model.flat_params).all()
