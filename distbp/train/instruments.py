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

    @contextlib.contextmanager
    def section(self, name: str, step: int, span: str | None = None, **args):
        """A watchdog section (a rank stuck in it past --timeout ends the job), with the tracer's slice
        `span` inside it when given."""
        with self.watchdog.section(name, step):
            if span is None:
                yield
            else:
                with self.trace.span(span, **args):
                    yield

    def span(self, name: str, **args):
        """The tracer's slice around the block (--trace), untimed."""
        return self.trace.span(name, **args)

    @contextlib.contextmanager
    def compute(self, span: str | None = None, **args):
        """The block's seconds as compute, less the data gathered inside it (`data`), which count as data."""
        t = self.timers
        data_before, t0 = t.data_s, time.perf_counter()
        with self._maybe_span(span, args):
            yield
        t.compute_s += (time.perf_counter() - t0) - (t.data_s - data_before)

    @contextlib.contextmanager
    def comm(self, span: str, **args):
        """The block's seconds as communication (waiting for the other ranks)."""
        t0 = time.perf_counter()
        with self.trace.span(span, **args):
            yield
        self.timers.comm_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def data(self, span: str, **args):
        """The block's seconds as data (gathering rows into the run's buffers)."""
        t0 = time.perf_counter()
        with self.trace.span(span, **args):
            yield
        self.timers.data_s += time.perf_counter() - t0

    def _maybe_span(self, span: str | None, args: dict):
        return contextlib.nullcontext() if span is None else self.trace.span(span, **args)
