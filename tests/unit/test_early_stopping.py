"""Early stopping, --eval-every and --save-best: evaluations at the right steps with the right numbers, the
stop after `patience` evaluations without improvement, the best model on disk, and a resumed run that decides
exactly as an uninterrupted one."""

import json
import re

import numpy as np
import pytest
from jobs import run_job

import distbp
from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import ConfigError, DistbpError
from distbp.train import loop
from distbp.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from distbp.train.position import Position
from distbp.train.setup import setup
from distbp.train.stopping import EarlyStopping

DATA = "synthetic:rows=230,features=10,classes=3,test=30"
STEPS_PER_EPOCH = 5  # 230 training rows in global batches of 46


def make(**overrides):
    cfg = validate(Config(**{**dict(data=DATA, layers=[10, 9, 3], epochs=10, batch_size=46, lr=0.05,
                                    optimizer="adam", progress="none", timeout=60), **overrides}))
    return setup(cfg, SerialComm())


def trained(**overrides):
    r = make(**overrides)
    try:
        loop.fit(r)
    finally:
        r.watchdog.stop()
    return r


def held_out(monkeypatch, values, metric="test_loss"):
    """Replace the held-out evaluation: the metric follows `values` (one per evaluation, in order; a dict:
    by the step the evaluation follows). Returns the evaluations seen: (step, a copy of the parameters)."""
    seen = []

    def evaluate(run):
        seen.append((run.pos.step, run.model.flat_params.copy()))
        v = values.get(run.pos.step, 1.0) if isinstance(values, dict) else values[len(seen) - 1]
        return (v, 0.5) if metric == "test_loss" else (1.0, v)

    monkeypatch.setattr(loop, "evaluate", evaluate)
    return seen


# ---- the rule -----------------------------------------------------------------------------------

def test_the_rule_counts_evaluations_without_improvement_and_ties_do_not_improve():
    rule, pos = EarlyStopping("test_accuracy", patience=2), Position()
    verdicts = []
    for step, v in enumerate([0.5, 0.6, 0.6, float("nan"), 0.7], start=1):
        pos.step = step
        verdicts.append(rule.observe(pos, {"test_accuracy": v}))
    assert verdicts == [(True, False), (True, False), (False, False), (False, True), (True, False)]
    assert (pos.best, pos.best_step, pos.since_best) == (0.7, 5, 0)


def test_without_patience_or_save_best_records_are_left_as_they_were():
    record = {"test_loss": 0.3}
    assert EarlyStopping("test_loss").observe(Position(), record) == (False, False)
    assert record == {"test_loss": 0.3}


# ---- stopping on a constructed curve ------------------------------------------------------------

@pytest.mark.parametrize("metric,values", [
    ("test_loss", [1.0, 0.8, 0.9, 0.85, 0.95, 0.7]),  # lower is better: 0.8 stays the best
    ("test_accuracy", [0.5, 0.6, 0.6, 0.55, 0.59, 0.9]),  # higher is better: a tie is no improvement
])
def test_stops_after_patience_evaluations_without_improvement(monkeypatch, metric, values):
    seen = held_out(monkeypatch, values, metric)
    r = trained(early_stop_patience=3, early_stop_metric=metric)
    assert [step for step, _ in seen] == [5, 10, 15, 20, 25]  # epoch ends; the 6th is never reached
    assert r.pos.step == 25 and [rec["epoch"] for rec in r.history] == [1, 2, 3, 4, 5]
    last = r.history[-1]
    assert last["stopped_early"] is True and last["best_" + metric] == values[1]
    assert [rec["stopped_early"] for rec in r.history[:-1]] == [False] * 4
    assert (r.pos.best, r.pos.best_step, r.pos.since_best) == (values[1], 10, 3)


def test_mid_epoch_evaluations_count_toward_the_patience(monkeypatch):
    seen = held_out(monkeypatch, [1.0, 0.8, 0.9, 0.85, 0.95, 0.7])
    r = trained(early_stop_patience=3, eval_every=2)
    # every 2 steps, and each epoch's end (5, 10, …); step 10 is an epoch end, evaluated once
    assert [step for step, _ in seen] == [2, 4, 5, 6, 8]
    assert r.pos.step == 8 and r.pos.epoch == 1 and r.pos.batch == 3  # stopped inside the second epoch
    assert [rec.get("eval_step", "epoch " + str(rec["epoch"])) for rec in r.history] == [2, 4, "epoch 1", 6, 8]
    assert r.history[-1]["stopped_early"] is True and r.history[-1]["best_test_loss"] == 0.8


def test_the_root_prints_the_stop_with_its_epoch_step_and_best(monkeypatch, capsys):
    held_out(monkeypatch, [1.0, 0.8, 0.9, 0.85, 0.95, 0.7])
    trained(early_stop_patience=3, eval_every=2)
    out = capsys.readouterr().out
    assert "epoch   2  step      8  test loss 0.9500" in out
    assert ("distbp: early stop at epoch 2, step 8: no better test_loss in 3 evaluations; "
            "best test_loss 0.8 at step 4") in out


def test_a_run_that_stopped_early_stays_stopped_when_resumed(monkeypatch, tmp_path, capsys):
    held_out(monkeypatch, [1.0, 0.8, 0.9, 0.85, 0.95, 0.7])
    first = trained(early_stop_patience=3, eval_every=2, checkpoint_dir=str(tmp_path))
    assert int(list_checkpoints(tmp_path)[-1].stem.split("-")[1]) == 8  # written where it stopped
    again = trained(early_stop_patience=3, eval_every=2, checkpoint_dir=str(tmp_path), resume=True)
    assert again.pos == first.pos
    np.testing.assert_array_equal(again.model.flat_params, first.model.flat_params)
    assert "the run stopped early at step 8" in capsys.readouterr().out


# ---- the best model -----------------------------------------------------------------------------

def test_save_best_keeps_the_parameters_of_the_best_evaluation(monkeypatch, tmp_path):
    values = [1.0, 0.9, 0.6, 0.7, 0.65, 0.8, 0.95]  # best: the third evaluation, not the last
    seen = held_out(monkeypatch, values)
    path = tmp_path / "best.npz"
    r = trained(early_stop_patience=4, eval_every=3, save_best=str(path))
    assert len(seen) == 7 and r.pos.step == seen[-1][0]
    best = distbp.load(path)
    np.testing.assert_array_equal(best.flat_params, seen[2][1])
    assert best.feature_offset is not None  # with the training's scaling: it predicts on raw rows


def test_save_best_with_the_real_evaluation_holds_the_lowest_held_out_loss(monkeypatch, tmp_path):
    real, seen = loop.evaluate, []

    def evaluate(run):
        result = real(run)
        seen.append((result[0], run.model.flat_params.copy()))
        return result

    monkeypatch.setattr(loop, "evaluate", evaluate)
    path = tmp_path / "best.npz"
    r = trained(epochs=4, eval_every=2, save_best=str(path), lr=0.2)
    losses = [loss for loss, _ in seen]
    assert len(losses) == 4 + 8  # 4 epoch ends, and steps 2, 4, 6, 8, 12, 14, 16, 18
    best = int(np.argmin(losses))
    assert best != len(losses) - 1, "the curve should turn up for this test to mean something"
    np.testing.assert_array_equal(distbp.load(path).flat_params, seen[best][1])
    assert r.history[-1]["best_test_loss"] == losses[best] == r.pos.best


# ---- evaluations every N steps ------------------------------------------------------------------

def test_eval_every_evaluates_after_the_right_steps_with_train_evaluates_numbers():
    # the same training, evaluated by hand at steps 3, 6, 9 through a callback that stops nothing
    plain = make(epochs=2)
    by_hand = {}
    loop.fit(plain, lambda rec: "step" in rec and by_hand.update({rec["step"]: loop.evaluate(plain)}),
              callback_every=3)
    plain.watchdog.stop()
    r = trained(epochs=2, eval_every=3)
    evals = [rec for rec in r.history if "eval_step" in rec]
    assert [rec["eval_step"] for rec in evals] == [3, 6, 9] == sorted(by_hand)
    assert [rec["epoch"] for rec in evals] == [1, 2, 2]
    for rec in evals:
        assert (rec["test_loss"], rec["test_accuracy"]) == by_hand[rec["eval_step"]]
    np.testing.assert_array_equal(r.model.flat_params, plain.model.flat_params)  # evaluating changes nothing
    epochs = [rec for rec in r.history if "eval_step" not in rec]
    assert [rec["epoch"] for rec in epochs] == [1, 2] and set(epochs[0]) == set(plain.history[0])


def test_mid_epoch_evaluations_are_lines_of_the_metrics_file(tmp_path):
    path = tmp_path / "m.jsonl"
    r = trained(epochs=2, eval_every=4, metrics=str(path))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line.get("eval_step") for line in lines] == [4, None, 8, None]
    assert lines == json.loads(json.dumps(r.history))


# ---- resume -------------------------------------------------------------------------------------

def test_resume_in_the_middle_keeps_the_count_and_stops_where_an_uninterrupted_run_does(monkeypatch, tmp_path):
    # by step: the best at step 4, then no better value; with patience 5 the 5th evaluation after it
    # (steps 5, 6, 8, 10, 12) stops the run inside the third epoch
    curve = {2: 1.0, 4: 0.7, 5: 0.8, 6: 0.75, 8: 0.9, 10: 0.72, 12: 0.8}
    evaluations = held_out(monkeypatch, curve)
    options = dict(early_stop_patience=5, eval_every=2, save_best=str(tmp_path / "best.npz"))
    full = trained(**options)
    assert (full.pos.step, full.pos.epoch) == (12, 2)
    d = tmp_path / "ck"
    trained(**options, checkpoint_dir=str(d), checkpoint_steps=3, keep_checkpoints=50)
    for p in list_checkpoints(d):  # the run died after step 9, three evaluations without improvement
        if int(p.stem.split("-")[1]) > 9:
            p.unlink()
    before = len(evaluations)
    resumed = trained(**options, checkpoint_dir=str(d), resume=True)
    # it went on after step 9 with the count of 3: it evaluated after steps 10 and 12 only, and stopped at the 5th
    assert [step for step, _ in evaluations[before:]] == [10, 12]
    assert resumed.pos == full.pos
    np.testing.assert_array_equal(resumed.model.flat_params, full.model.flat_params)
    assert [rec.get("eval_step") for rec in resumed.history] == [rec.get("eval_step") for rec in full.history]


def test_checkpoints_from_before_early_stopping_still_resume(tmp_path):
    trained(epochs=1, checkpoint_dir=str(tmp_path))
    path = list_checkpoints(tmp_path)[-1]
    arrays, meta = load_checkpoint(path)
    for key in ("best", "best_step", "since_best"):
        del meta["position"][key]
    save_checkpoint(tmp_path, int(path.stem.split("-")[1]), arrays, meta)
    r = trained(epochs=2, early_stop_patience=1, checkpoint_dir=str(tmp_path), resume=True)
    assert r.pos.epoch == 2 and r.pos.best_step == 10 and r.history[-1]["stopped_early"] is False


# ---- the Python API and the command line --------------------------------------------------------

def rows(n: int, seed: int = 0):
    """n rows of 12 features, labels 0…2 that depend on them."""
    X = np.random.default_rng(seed).standard_normal((n, 12)).astype(np.float32)
    return X, np.argmax(X[:, :3], axis=1)


def test_distbp_fit_takes_the_options_and_returns_the_records(tmp_path):
    X, y = rows(200)
    Xt, yt = rows(40, seed=1)
    model = distbp.MLP([12, 8, 3], activation="tanh", seed=2)
    history = distbp.fit(model, X, y, validation=(Xt, yt), epochs=3, batch_size=50, lr=0.01, lr_scale="mean",
                         optimizer="adam", eval_every=2, early_stop_patience=20, save_best=str(tmp_path / "b.npz"),
                         verbose=False, threads=1)
    assert [rec.get("eval_step") for rec in history] == [2, None, 6, None, 10, None]
    assert all(rec["stopped_early"] is False and "best_test_loss" in rec for rec in history)
    assert distbp.load(tmp_path / "b.npz").sizes == [12, 8, 3]


def test_distbp_fit_without_held_out_rows_refuses_early_stopping():
    X, y = rows(100)
    with pytest.raises(DistbpError, match="--early-stop-patience: evaluations need held-out rows"):
        distbp.fit(distbp.MLP([12, 8, 3]), X, y, early_stop_patience=2, verbose=False, threads=1)


@pytest.mark.parametrize("overrides,words", [
    (dict(early_stop_metric="test_auc"), "--early-stop-metric must be one of test_loss, test_accuracy"),
    (dict(early_stop_patience=-1), "--early-stop-patience must not be negative"),
    (dict(eval_every=-5), "--eval-every must not be negative"),
])
def test_bad_options_are_clear_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        validate(Config(**overrides))


def test_save_best_into_a_directory_is_refused_before_training(tmp_path):
    with pytest.raises(DistbpError, match="--save-best .* is a directory"):
        make(save_best=str(tmp_path))


def test_command_line_stops_early_says_so_and_exits_0(tmp_path):
    best, metrics = tmp_path / "best.npz", tmp_path / "m.jsonl"
    done = run_job(1, ["distbp", "train", "--data", DATA, "--layers", "10,9,3", "--epochs", "30",
                       "--batch-size", "46", "--optimizer", "adam", "--lr", "0.05", "--seed", "1",
                       "--eval-every", "2", "--early-stop-patience", "2", "--save-best", str(best),
                       "--metrics", str(metrics), "--progress", "none", "--timeout", "60"], timeout=60)
    assert done.returncode == 0, done.output
    stop = re.search(r"distbp: early stop at epoch (\d+), step (\d+): no better test_loss in 2 evaluations; "
                     r"best test_loss (\S+) at step (\d+)", done.stdout)
    assert stop, done.output
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["stopped_early"] is True
    assert int(stop.group(2)) == last.get("eval_step", STEPS_PER_EPOCH * last["epoch"])
    assert float(stop.group(3)) == pytest.approx(last["best_test_loss"], rel=1e-5)
    assert f"distbp: the best model (test_loss {stop.group(3)} at step {stop.group(4)}) is in {best}" in done.stdout
