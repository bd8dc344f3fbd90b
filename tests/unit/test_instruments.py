"""The step's instruments: compute, comm and data seconds split as the epoch's record reports them, watchdog
sections around the phases, and nothing counted for a block that raises."""

import contextlib

import pytest

from distbp.observe.trace import NULL_TRACER
from distbp.train import instruments
from distbp.train.instruments import Instruments, Timers


class Clock:
    """time.perf_counter that moves only when the test says so."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Sections:
    """A watchdog that records the sections it was asked to watch."""

    def __init__(self):
        self.seen = []

    @contextlib.contextmanager
    def section(self, name, step):
        self.seen.append((name, step))
        yield


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(instruments.time, "perf_counter", c)
    return c


def test_compute_leaves_out_the_data_gathered_inside_it_and_comm_and_update_add_up(clock):
    t = Timers()
    inst = Instruments(Sections(), NULL_TRACER, t)
    with inst.compute("local gradient", rows=3):
        clock.t += 1.0
        with inst.data("gather"):
            clock.t += 0.25
        clock.t += 0.5
    with inst.comm("finish"):
        clock.t += 2.0
    with inst.comm("scalar allreduce"):
        clock.t += 0.125
    with inst.compute():  # the update
        clock.t += 4.0
    assert t.data_s == 0.25
    assert t.compute_s == 1.0 + 0.5 + 4.0
    assert t.comm_s == 2.0 + 0.125


def test_a_block_that_raises_counts_nothing(clock):
    t = Timers()
    inst = Instruments(Sections(), NULL_TRACER, t)
    for timed in (inst.compute(), inst.comm("finish"), inst.data("gather")):
        with pytest.raises(RuntimeError), timed:
            clock.t += 1.0
            raise RuntimeError("a failed step")
    assert (t.compute_s, t.comm_s, t.data_s) == (0.0, 0.0, 0.0)


def test_sections_are_the_watchdogs_with_the_step_they_belong_to():
    watchdog = Sections()
    inst = Instruments(watchdog, NULL_TRACER, Timers())
    with inst.section("gradient allreduce", 7):
        pass
    with inst.section("parameter update", 7, span="update"):
        pass
    assert watchdog.seen == [("gradient allreduce", 7), ("parameter update", 7)]
