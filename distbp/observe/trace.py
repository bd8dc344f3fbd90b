"""--trace: a per-rank timeline of a step, as a Chrome trace-event file (Perfetto, chrome://tracing).

Each rank records its own events; `pid` is the rank and `tid` a track of that rank:

    tid 0  main      data gather, forward/backward per layer, update, scalar allreduce, evaluation,
                     checkpoints; every progress call that let MPI move the buckets ("progress")
    tid 1  phases    the watchdog's sections (start-up, gradient allreduce, parameter update, …)
    tid 2  buckets   one async slice per bucket, from its start to the wait that completed it

Slices on one track nest (a "X" complete event inside another lies wholly within it); buckets are
async events ("b"/"e", one id per bucket and step) because several are in flight at once. A step is
a "step" slice on the main track with args {"step": s}; bucket slices carry {"bytes": …}.

Clocks: each rank's timestamps are microseconds of time.perf_counter_ns, shifted by the offset to
rank 0's clock that `align_clocks` measures at start-up (ping-pong with the root, the sample of the
shortest round trip kept), so tracks of different ranks and hosts line up to about half a round trip.

Writing: every rank appends its events to `PATH.rank<R>.json` after each step (a JSON array that
Perfetto reads even unterminated, so a killed job leaves a readable file), and closes the array on
any ending it sees. At the end of a run that every rank finished, the root gathers the events and
writes PATH (one JSON object, atomically) and the part files are removed; after a failure they stay.

`NULL_TRACER` stands in when --trace is off: its `on` is False and callers test it before building
any event, so the untraced step pays one attribute read per hook. A span that records nothing (the null tracer's,
or a tracer's outside its --trace-steps window) is the one shared do-nothing context `NOTHING`: no generator or
object is made per call in the hot path.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from contextlib import contextmanager, nullcontext

import numpy as np

MAIN, PHASES, BUCKETS = 0, 1, 2
TRACK_NAMES = {MAIN: "main", PHASES: "phases", BUCKETS: "buckets"}


def parse_steps(spec: str | None) -> tuple[int, int] | None:
    """'10:20' -> (10, 20): steps 10…19 (global step numbers from 0); ':20', '10:' open-ended; None -> all."""
    if not spec:
        return None
    lo, sep, hi = spec.partition(":")
    if not sep:
        raise ValueError(f"--trace-steps wants START:STOP (steps START…STOP-1), got {spec!r}")
    try:
        start = int(lo) if lo.strip() else 0
        stop = int(hi) if hi.strip() else 2 ** 62
    except ValueError:
        raise ValueError(f"--trace-steps wants whole numbers START:STOP, got {spec!r}") from None
    if start < 0 or stop <= start:
        raise ValueError(f"--trace-steps {spec!r} is empty: it needs 0 <= START < STOP")
    return start, stop


class NullTracer:
    """--trace off: records nothing."""

    on = False

    def span(self, name: str, tid: int = MAIN, **args):
        return NOTHING  # one shared do-nothing context: no generator per call in the hot path

    def at_step(self, step: int) -> None:
        pass

    def close_part(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def finish(self, comm) -> None:
        pass


NOTHING = nullcontext()  # a context that does nothing, shared (it holds no state): what a span that records nothing is
NULL_TRACER = NullTracer()


class Tracer:
    """This rank's events; `on` says whether events are being recorded now (the --trace-steps window)."""

    def __init__(self, path: str, rank: int, steps: tuple[int, int] | None = None):
        self.path, self.rank, self.window = path, rank, steps
        self.events: list[dict] = []
        self._written = 0
        self.offset_us = 0.0  # added to this rank's clock to give rank 0's (set by align_clocks)
        self.on = steps is None or steps[0] == 0
        self.part_path = f"{path}.rank{rank}.json"
        self._part = open(self.part_path, "w")
        self._part.write("[\n")
        self._ids = 0
        self._meta()

    # ---- recording -------------------------------------------------------------------------
    def now(self) -> float:
        """Microseconds on rank 0's clock: this rank's perf_counter, shifted by offset_us."""
        return time.perf_counter_ns() / 1000.0 + self.offset_us

    def span(self, name: str, tid: int = MAIN, **args):
        """A complete ("X") slice around the enclosed code; nothing when off (`NOTHING`). A slice that an exception
        ends carries it in args["error"], so a failed step shows where it broke."""
        return self._recorded(name, tid, args) if self.on else NOTHING

    @contextmanager
    def _recorded(self, name: str, tid: int, args: dict):
        t0 = self.now()
        try:
            yield
        except BaseException as e:
            self.complete(name, t0, self.now() - t0, tid, **args, error=f"{type(e).__name__}: {e}"[:200])
            raise
        self.complete(name, t0, self.now() - t0, tid, **args)

    def complete(self, name: str, ts: float, dur: float, tid: int = MAIN, **args) -> None:
        event = {"name": name, "ph": "X", "ts": ts, "dur": dur, "pid": self.rank, "tid": tid}
        if args:
            event["args"] = args
        self.events.append(event)

    def async_begin(self, name: str, **args) -> int:
        """Start an async slice on the buckets track; returns its id for async_end."""
        self._ids += 1
        event = {"name": name, "ph": "b", "cat": "bucket", "id": self._ids, "ts": self.now(),
                 "pid": self.rank, "tid": BUCKETS}
        if args:
            event["args"] = args
        self.events.append(event)
        return self._ids

    def async_end(self, name: str, ident: int) -> None:
        self.events.append({"name": name, "ph": "e", "cat": "bucket", "id": ident, "ts": self.now(),
                            "pid": self.rank, "tid": BUCKETS})

    def at_step(self, step: int) -> None:
        """Between steps: write what was recorded, and switch on/off for the --trace-steps window."""
        self.flush()
        if self.window is not None:
            self.on = self.window[0] <= step < self.window[1]

    def _meta(self) -> None:
        self.events.append({"name": "process_name", "ph": "M", "pid": self.rank, "tid": MAIN,
                            "args": {"name": f"rank {self.rank}"}})
        self.events.append({"name": "process_sort_index", "ph": "M", "pid": self.rank, "tid": MAIN,
                            "args": {"sort_index": self.rank}})
        for tid, name in TRACK_NAMES.items():
            self.events.append({"name": "thread_name", "ph": "M", "pid": self.rank, "tid": tid,
                                "args": {"name": name}})

    # ---- writing ---------------------------------------------------------------------------
    def flush(self) -> None:
        """Append the events recorded since the last flush to this rank's part file."""
        if self._part is None or self._written == len(self.events):
            return
        self._part.write("".join(json.dumps(e) + ",\n" for e in self.events[self._written:]))
        self._part.flush()
        self._written = len(self.events)

    def discard(self) -> None:
        """Close and remove this rank's part file: the run never started (its set-up was refused)."""
        if self._part is not None:
            self._part.close()
            self._part = None
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.part_path)

    def close_part(self) -> None:
        """Make this rank's part file a complete JSON array (after a failure it is the trace)."""
        if self._part is None:
            return
        self.flush()
        self._part.write(json.dumps({"name": "trace_end", "ph": "i", "s": "p", "ts": self.now(),
                                     "pid": self.rank, "tid": MAIN}) + "\n]\n")
        self._part.close()
        self._part = None

    def finish(self, comm) -> None:
        """[dist] The run ended on every rank: the root writes PATH with every rank's events."""
        self.close_part()
        everything = comm.allgather_object(self.events)
        if comm.is_root:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"traceEvents": [e for events in everything for e in events],
                           "displayTimeUnit": "ms",
                           "otherData": {"generator": "distbp --trace", "ranks": comm.size}}, f)
            os.replace(tmp, self.path)
        comm.barrier()
        os.remove(self.part_path)


def align_clocks(tracer: Tracer, comm, rounds: int = 8) -> list[float]:
    """[dist] Set tracer.offset_us on every rank to (rank 0's clock − this rank's), by ping-pong.

    For each rank r in turn, the root sends its time t0, r answers with its own time t_r, and the
    root notes t1 on receipt; offset_r = (t0 + t1)/2 − t_r from the round with the smallest t1 − t0.
    Returns the round-trip times (µs) of the kept samples on the root (empty elsewhere).
    """
    tracer.offset_us = 0.0  # the ping-pong compares the ranks' own clocks
    if comm.size == 1:
        return []
    rtts, offsets = [], np.zeros(comm.size)
    buf = np.zeros(1)
    for r in range(1, comm.size):
        best = (float("inf"), 0.0)
        for _ in range(rounds):
            if comm.rank == 0:
                t0 = tracer.now()
                buf[0] = t0
                comm.wait_all([comm.start_send(buf, r)])
                comm.wait_all([comm.start_recv(buf, r)])
                t1 = tracer.now()
                if t1 - t0 < best[0]:
                    best = (t1 - t0, (t0 + t1) / 2 - buf[0])
            elif comm.rank == r:
                comm.wait_all([comm.start_recv(buf, 0)])
                buf[0] = tracer.now()
                comm.wait_all([comm.start_send(buf, 0)])
        if comm.rank == 0:
            offsets[r] = best[1]
            rtts.append(best[0])
    comm.bcast(offsets)
    tracer.offset_us = float(offsets[comm.rank])
    return rtts
