"""The watchdog: ends the whole job when a collective phase makes no progress.

MPI has no timeout: a rank that stops (a deadlock, SIGSTOP, a hung file system) leaves its peers
waiting in the next collective forever, in every MPI tried here. Only an application-level watchdog
catches that; this one uses nothing but the `Comm` interface.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

from distbp.comm.base import Comm
from distbp.comm.checks import rank_list
from distbp.errors import StallError
from distbp.host.procs import process_alive
from distbp.observe.trace import NULL_TRACER, PHASES

STALL_EXIT_CODE = 124


class Watchdog:
    """A daemon thread that ends the whole job when a collective phase lasts longer than timeout seconds.

    A rank that stops (deadlock, SIGSTOP, a hung file system) leaves its peers waiting forever in
    the next collective; MPI itself never notices. Wrap each collective phase in
    `with watchdog.section("gradient allreduce", step):`. timeout <= 0 disables the watchdog.

    With `heartbeat_dir` (a directory every rank can see), each rank's watchdog also writes a small
    heartbeat file about once a second: rank, host, phase, step. When a rank gives up it reads the
    others' heartbeats to say who is at fault: a rank whose heartbeat stopped is stopped or dead; if
    every rank is alive and waiting, the network between them failed.
    """

    BEAT_S = 1.0  # heartbeat period, at most; shorter for short timeouts (timeout / 6)

    def __init__(self, comm: Comm, timeout: float, heartbeat_dir: str | None = None):
        self.comm, self.timeout = comm, float(timeout)
        self.heartbeat_dir = None
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._current: tuple[str, int, float] | None = None
        self._last: tuple[str, int] = ("start-up", 0)
        self._stopped = threading.Event()
        self._thread = None
        self.trace = NULL_TRACER  # --trace: sections become slices on the "phases" track
        self._beat_s = min(self.BEAT_S, self.timeout / 6)
        self.attach_heartbeats(heartbeat_dir)
        if self.timeout > 0:
            self._thread = threading.Thread(target=self._watch, name="distbp-watchdog", daemon=True)
            self._thread.start()

    def attach_heartbeats(self, heartbeat_dir: str | None) -> None:
        """Start leaving heartbeats in heartbeat_dir (a watchdog made before its folder was agreed has none)."""
        if heartbeat_dir and self.timeout > 0:
            os.makedirs(heartbeat_dir, exist_ok=True)
            self.heartbeat_dir = heartbeat_dir
            self._beat(None, self._last)  # at once: a rank may stall before the thread's next beat

    @contextlib.contextmanager
    def section(self, what: str, step: int, at_least: float = 0.0):
        """Time the enclosed phase; nested sections restore the outer one on exit.

        at_least: seconds this phase may take whatever --timeout says (a long phase that is not a
        collective's wait, such as waiting while another rank compiles the kernels).
        """
        with self.trace.span(what, PHASES, step=step), self._timed(what, step, at_least):
            yield

    @contextlib.contextmanager
    def _timed(self, what: str, step: int, at_least: float = 0.0):
        if self._thread is None:
            yield
            return
        with self._lock:
            # a phase allowed at_least seconds counts as started that much later, less the timeout
            start = time.monotonic() + max(0.0, at_least - self.timeout)
            outer, self._current = self._current, (what, step, start)
            self._last = (what, step)
        try:
            yield
        finally:
            with self._lock:
                self._current = outer

    def _watch(self) -> None:
        poll = min(0.5, self.timeout / 10)
        next_beat = 0.0
        while not self._stopped.wait(poll):
            with self._lock:
                current, last = self._current, self._last
            now = time.monotonic()
            if self.heartbeat_dir and now >= next_beat:
                self._beat(current, last)
                next_beat = now + self._beat_s
            if current is not None and now - current[2] > self.timeout:
                what, step, _ = current
                stall = StallError(f"no progress for {self.timeout:g} s in {what} at step {step} "
                                   f"({self._diagnose()})")
                self.comm.say(str(stall))
                self.comm.hard_exit(STALL_EXIT_CODE)

    def _heartbeat_path(self, rank: int) -> str:
        return os.path.join(self.heartbeat_dir, f"rank-{rank}.json")

    def _beat(self, current, last) -> None:
        what, step = (current[0], current[1]) if current else last
        beat = {"rank": self.comm.rank, "host": self._host, "pid": os.getpid(), "time": time.time(),
                "phase": what, "step": step, "waiting": current is not None}
        path = self._heartbeat_path(self.comm.rank)
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump(beat, fh)
            os.replace(path + ".tmp", path)
        except OSError:
            pass  # a heartbeat is a diagnosis aid; never fail training over it

    def _diagnose(self) -> str:
        """Who is at fault, from the other ranks' heartbeats (or the generic cause without them)."""
        if not self.heartbeat_dir:
            return "a peer rank is stalled or dead"
        silent, alive, missing = [], [], []
        now = time.time()
        for r in range(self.comm.size):
            if r == self.comm.rank:
                continue
            try:
                with open(self._heartbeat_path(r)) as fh:
                    beat = json.load(fh)
            except (OSError, ValueError):
                missing.append(r)
                continue
            age = now - beat["time"]
            where = f"rank {r} on {beat['host']}"
            if age > 3 * self._beat_s:
                silent.append(f"{where} silent for {age:.0f} s (stopped or dead; last in {beat['phase']} "
                              f"at step {beat['step']})")
            else:
                alive.append(f"{where} alive, in {beat['phase']} at step {beat['step']}")
        parts = silent + alive
        if missing:
            parts.append(f"no heartbeat from {rank_list(missing)} (not on a shared file system?)")
        if not silent and not missing:
            parts.insert(0, "every rank is alive and waiting: the network between them failed")
        return "; ".join(parts)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.heartbeat_dir:
            with contextlib.suppress(OSError):
                os.remove(self._heartbeat_path(self.comm.rank))
                os.rmdir(self.heartbeat_dir)  # the last rank to stop finds it empty


HEARTBEAT_PREFIX = "distbp-heartbeat-"


def remove_abandoned_heartbeats(parent: str) -> None:
    """Remove heartbeat folders in `parent` left by jobs that ended abnormally: every rank that beat there
    was on this host and its process is gone (folders with another host's beats are left alone)."""
    host = socket.gethostname()
    try:
        names = [n for n in os.listdir(parent) if n.startswith(HEARTBEAT_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(parent, name)
        try:
            beats = [_read_json(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".json")]
            if not beats and time.time() - os.path.getmtime(folder) < 3600:
                continue  # a job that is starting: its first beat is on its way
        except (OSError, ValueError):
            continue  # gone meanwhile, or being written
        if all(isinstance(b, dict) and b.get("host") == host and not process_alive(b.get("pid")) for b in beats):
            with contextlib.suppress(OSError):
                for f in os.listdir(folder):
                    os.remove(os.path.join(folder, f))
                os.rmdir(folder)


def _read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)
