"""Learning-rate schedules and warm-up: η is a closed-form function of the global step, and a resumed run
gets every step's η back, so resume in the middle of a warm-up or a decay is bit-exact."""

import math

import numpy as np
import pytest

from distbp.comm.serial import SerialComm
from distbp.config import Config, validate
from distbp.errors import ConfigError
from distbp.train import loop
from distbp.train.checkpoint import list_checkpoints
from distbp.train.schedule import Schedule
from distbp.train.setup import setup

SMALL = "synthetic:rows=230,features=10,classes=3,test=30"


def closed_form(kind, step, lr, S, milestones=(), decay=0.1, final=0.0, W=0, w0=0.0):
    """The schedules as the docs write them, independently of distbp.train.schedule."""
    if kind == "constant":
        value = lr
    elif kind == "step":
        value = lr * decay ** len([m for m in milestones if step >= m])
    elif kind == "cosine":
        value = final + 0.5 * (lr - final) * (1 + math.cos(math.pi * min(step, S) / S))
    else:
        value = lr - (lr - final) * min(step, S) / S
    return value * (w0 + (1 - w0) * step / W if step < W else 1.0)


@pytest.mark.parametrize("kind, extra", [
    ("constant", {}),
    ("step", dict(lr_milestones=[2, 4], lr_decay=0.5)),
    ("cosine", dict(lr_final=0.001)),
    ("linear", dict(lr_final=0.0)),
])
@pytest.mark.parametrize("warmup", [{}, dict(warmup_steps=7, warmup_start=0.1), dict(warmup_epochs=1)])
def test_every_schedule_equals_its_closed_form_at_every_step(kind, extra, warmup):
    cfg = validate(Config(data=SMALL, lr=0.05, epochs=5, lr_schedule=kind, **extra, **warmup))
    steps_per_epoch = 9
    schedule = Schedule.of(cfg, steps_per_epoch)
    S = 5 * steps_per_epoch
    W = warmup.get("warmup_steps", 0) or warmup.get("warmup_epochs", 0) * steps_per_epoch
    milestones = [m * steps_per_epoch for m in extra.get("lr_milestones", [])]
    for step in range(S + 3):
        want = closed_form(kind, step, 0.05, S, milestones, extra.get("lr_decay", 0.1), extra.get("lr_final", 0.0),
                           W, warmup.get("warmup_start", 0.0))
        assert schedule(step) == pytest.approx(want, rel=1e-12, abs=1e-15), step


def test_warm_up_starts_at_its_fraction_and_reaches_the_rate():
    s = Schedule.of(validate(Config(data=SMALL, lr=0.2, warmup_steps=4, warmup_start=0.25)), 10)
    assert [s(k) for k in range(6)] == pytest.approx([0.05, 0.0875, 0.125, 0.1625, 0.2, 0.2])


def set_up(**overrides):
    """A run ready to train, resumed from its checkpoint when asked: `pos` is where it will start."""
    cfg = validate(Config(**{**dict(data=SMALL, layers=[10, 9, 3], dtype="float64", epochs=4, batch_size=32,
                                    lr=0.05, optimizer="momentum", progress="none", timeout=60), **overrides}))
    return setup(cfg, SerialComm())


def train(r):
    """Train a set-up run to its end."""
    loop.fit(r)
    r.watchdog.stop()
    return r


def run(**overrides):
    return train(set_up(**overrides))


def test_the_optimizer_steps_with_the_schedules_rate():
    constant = run(epochs=1, optimizer="gd")
    scheduled = run(epochs=1, optimizer="gd", lr_schedule="linear", lr_final=0.0)
    assert not np.array_equal(constant.model.flat_params, scheduled.model.flat_params)
    assert scheduled.history[-1]["lr"] == pytest.approx(0.05 * (1 - (scheduled.pos.step - 1) / scheduled.pos.step))
    assert constant.history[-1]["lr"] == 0.05


@pytest.mark.parametrize("where, options", [
    ("in the warm-up", dict(warmup_steps=12, warmup_start=0.1)),
    ("in a cosine decay", dict(lr_schedule="cosine", lr_final=0.001)),
    ("between step milestones", dict(lr_schedule="step", lr_milestones=[1, 3], lr_decay=0.3, warmup_epochs=1)),
])
def test_resume_in_the_middle_of_a_schedule_is_bit_exact(tmp_path, where, options):
    whole = run(**options)
    d = tmp_path / "ck"
    run(checkpoint_dir=str(d), checkpoint_steps=5, keep_checkpoints=50, **options)
    # the run "died" after step 10 (inside the warm-up, the decay, before the second milestone)
    for path in list_checkpoints(d):
        if int(path.stem.split("-")[1]) > 10:
            path.unlink()
    resumed = set_up(checkpoint_dir=str(d), resume=True, **options)
    started = (resumed.pos.epoch, resumed.pos.batch, resumed.pos.step)
    train(resumed)
    # it went on after step 10, the checkpoint's: the 3rd batch of epoch 2 (8 batches an epoch), not step 0
    assert started == (1, 2, 10), where
    assert resumed.model.flat_params.tobytes() == whole.model.flat_params.tobytes(), where
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in whole.history]


@pytest.mark.parametrize("options, words", [
    (dict(lr_schedule="step"), "needs --lr-milestones"),
    (dict(lr_milestones=[2]), "go with --lr-schedule step"),
    (dict(lr_schedule="step", lr_milestones=[3, 2]), "increasing"),
    (dict(warmup_steps=5, warmup_epochs=1), "not both"),
    (dict(warmup_start=1.5), "fraction"),
    (dict(lr_schedule="cosine", lr_final=1.0), "above --lr"),
    (dict(lr_schedule="exponential"), "must be one of"),
])
def test_bad_schedules_are_one_clear_error(options, words):
    with pytest.raises(ConfigError, match=None) as info:
        validate(Config(data=SMALL, lr=0.1, **options))
    assert words in str(info.value)
