"""What watches and measures a run: the watchdog's sections, the tracer's spans and the epoch's timers, behind
one object (`Instruments`) that the step and the epochs report to, so that the loop reads as its math.

The timers split each step's seconds on this rank (`Timers`): data is gathering rows into the run's buffers,
compute is the local gradient less the data gathered inside it plus the update (or the non-finite policy),
comm is waiting for ∇L and for the agreed verdict.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from distbp.observe.trace import NullTracer, Tracer
from distbp.train.watchdog import Watchdog


@dataclass
class Timers:
    """Seconds of this epoch on this rank: gathering rows, computing, waiting for other ranks."""

    data_s: float = 0.0
    compute_s: float = 0.0
    comm_s: float = 0.0

    def reset(self) -> None:
        self.data_s = self.compute_s = self.comm_s = 0.0


class Instruments:
    """A run's watchdog, tracer and timers (the run's own objects, shared with it, not copies).

    Each context manager adds its seconds only when its block ends normally: a step that raises is not
    timed, as it never was.
    """

    def __init__(self, watchdog: Watchdog, trace: Tracer | NullTracer, timers: Timers):
        self.watchdog, self.trace, self.timers = watchdog, trace, timers

    def section(self, name: str, step: int, span: str | None = None, **args):
        """A watchdog section (a rank stuck in it past --timeout ends the job), with the tracer's slice
        `span` inside it when given. Without --trace it is the watchdog's own (`Watchdog.section`), which in one
        process is the shared do-nothing context."""
        watched = self.watchdog.section(name, step)
        if span is None or not self.trace.on:
            return watched
        return _traced_section(watched, self.trace.span(span, **args))

    def span(self, name: str, **args):
        """The tracer's slice around the block (--trace), untimed."""
        return self.trace.span(name, **args)

    def compute(self, span: str | None = None, **args) -> "_Timed":
        """The block's seconds as compute, less the data gathered inside it (`data`), which count as data."""
        return _Timed(self.timers, "compute_s", self._span(span, args), less_data=True)

    def comm(self, span: str, **args) -> "_Timed":
        """The block's seconds as communication (waiting for the other ranks)."""
        return _Timed(self.timers, "comm_s", self._span(span, args))

    def data(self, span: str, **args) -> "_Timed":
        """The block's seconds as data (gathering rows into the run's buffers)."""
        return _Timed(self.timers, "data_s", self._span(span, args))

    def _span(self, span: str | None, args: dict):
        """The tracer's slice `span` (None: none) while it records, else None (no context to enter)."""
        return self.trace.span(span, **args) if span is not None and self.trace.on else None


@contextlib.contextmanager
def _traced_section(watched, span):
    with watched, span:
        yield


class _Timed:
    """A block whose seconds go to one of the timers, inside a trace span (None: none). A class rather than a
    generator-based context manager: a step enters several (about 1.7 µs each here, against 2.4-2.9 µs as
    generators)."""

    __slots__ = ("timers", "name", "span", "less_data", "t0", "data0")

    def __init__(self, timers: Timers, name: str, span, less_data: bool = False):
        self.timers, self.name, self.span, self.less_data = timers, name, span, less_data

    def __enter__(self) -> None:
        self.data0, self.t0 = self.timers.data_s, time.perf_counter()
        if self.span is not None:
            self.span.__enter__()

    def __exit__(self, kind, value, tb) -> bool:
        if self.span is not None:
            self.span.__exit__(kind, value, tb)
        if kind is None:  # a block that raises adds no time
            seconds = time.perf_counter() - self.t0
            if self.less_data:
                seconds -= self.timers.data_s - self.data0
            setattr(self.timers, self.name, getattr(self.timers, self.name) + seconds)
        return False
