"""The watchdog: ends the whole job when a collective phase makes no progress.

MPI has no timeout: a rank that stops (a deadlock, SIGSTOP, a hung file system) leaves its peers
waiting in the next collective forever, in every MPI tried here. Only an application-level watchdog
catches that; this one uses nothing but the `Comm` interface.

In one process there is no peer to wait for: `distbp.train.setup` starts no watchdog thread there, so a
slow step is never an error and a library call never ends its caller's interpreter.

Heartbeat folders are never used through a symlink: a rank opens its folder once (O_NOFOLLOW, checked to
be its own) and writes, reads and removes heartbeats by name relative to that open folder; the clean-up of
abandoned folders skips any folder, or entry, that is not a real one of this user's.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import threading
import time

from distbp.comm.base import Comm
from distbp.comm.checks import rank_list
from distbp.errors import StallError
from distbp.host.files import UnsafeFolder, make_private_dir
from distbp.host.procs import process_alive
from distbp.observe.trace import NOTHING, NULL_TRACER, PHASES

STALL_EXIT_CODE = 124


class Watchdog:
    """A daemon thread that ends the whole job when a collective phase lasts longer than timeout seconds.

    A rank that stops (deadlock, SIGSTOP, a hung file system) leaves its peers waiting forever in
    the next collective; MPI itself never notices. It is for jobs of several ranks: when it fires it ends the
    process (`comm.hard_exit`), so a one-process run starts none (timeout 0, see `distbp.train.setup`).
    Wrap each collective phase in `with watchdog.section("gradient allreduce", step):`. timeout <= 0
    disables the watchdog.

    With `heartbeat_dir` (a directory every rank can see), each rank's watchdog also writes a small
    heartbeat file about once a second: rank, host, phase, step. When a rank gives up it reads the
    others' heartbeats to say who is at fault: a rank whose heartbeat stopped is stopped or dead; if
    every rank is alive and waiting, the network between them failed.
    """

    BEAT_S = 1.0  # heartbeat period, at most; shorter for short timeouts (timeout / 6)

    def __init__(self, comm: Comm, timeout: float, heartbeat_dir: str | None = None):
        self.comm, self.timeout = comm, float(timeout)
        self.heartbeat_dir = None
        self._dir_fd: int | None = None  # the heartbeat folder, opened once: every file is reached through it
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
        """Start leaving heartbeats in heartbeat_dir (a watchdog made before its folder was agreed has none).

        The folder is made (0700) if missing and must be a real folder of this user's (`distbp.host.files`);
        one that is not (the caller checked it first: `distbp.train.setup.heartbeat_dir`) leaves this rank
        without heartbeats, said once: they only help to name a stalled rank."""
        if not heartbeat_dir or self.timeout <= 0:
            return
        try:
            make_private_dir(heartbeat_dir, "the heartbeat folder")
            fd = os.open(heartbeat_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (OSError, UnsafeFolder) as e:
            self.comm.say(f"warning: no heartbeats: {e}")
            return
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            os.close(fd)  # swapped after the check: not ours
            self.comm.say(f"warning: no heartbeats: {heartbeat_dir} is not a private folder of yours")
            return
        self.heartbeat_dir, self._dir_fd = heartbeat_dir, fd
        self._beat(None, self._last)  # at once: a rank may stall before the thread's next beat

    def section(self, what: str, step: int, at_least: float = 0.0):
        """A context around the enclosed phase: timed (a phase that outlasts the timeout ends the job) and, with
        --trace, a slice on the "phases" track; nested sections restore the outer one on exit.

        at_least: seconds this phase may take whatever --timeout says (a long phase that is not a
        collective's wait, such as waiting while another rank compiles the kernels).
        With no thread watching and nothing traced it is the shared do-nothing context (`NOTHING`): a step
        enters a few sections, and in one process they cost nothing.
        """
        if self._thread is None and not self.trace.on:
            return NOTHING
        return _Section(self, what, step, at_least)

    def _enter(self, what: str, step: int, at_least: float):
        """The thread watches (what, step) from now; returns the section it watched before (None: none)."""
        with self._lock:
            # a phase allowed at_least seconds counts as started that much later, less the timeout
            start = time.monotonic() + max(0.0, at_least - self.timeout)
            outer, self._current = self._current, (what, step, start)
            self._last = (what, step)
        return outer

    def _leave(self, outer) -> None:
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

    @staticmethod
    def _heartbeat_name(rank: int) -> str:
        return f"rank-{rank}.json"

    def _beat(self, current, last) -> None:
        what, step = (current[0], current[1]) if current else last
        beat = {"rank": self.comm.rank, "host": self._host, "pid": os.getpid(), "time": time.time(),
                "phase": what, "step": step, "waiting": current is not None}
        name = self._heartbeat_name(self.comm.rank)
        fd = self._dir_fd
        try:
            out = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                          0o600, dir_fd=fd)
            with os.fdopen(out, "w") as fh:
                json.dump(beat, fh)
            os.replace(name + ".tmp", name, src_dir_fd=fd, dst_dir_fd=fd)
        except (OSError, TypeError, ValueError):
            # a heartbeat is a diagnosis aid; never fail training over it (nor leave its half-written file)
            with contextlib.suppress(OSError, TypeError):
                os.unlink(name + ".tmp", dir_fd=fd)

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
                beat = _read_beat(self._dir_fd, self._heartbeat_name(r))
            except (OSError, ValueError, TypeError):
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
        if self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._heartbeat_name(self.comm.rank), dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = None
            with contextlib.suppress(OSError):
                os.rmdir(self.heartbeat_dir)  # the last rank to stop finds it empty (a symlink there: ENOTDIR)


class _Section:
    """One watched phase (`Watchdog.section`): the tracer's slice outside, the thread's timing inside. A class,
    not a generator: the step enters several."""

    __slots__ = ("at_least", "dog", "outer", "span", "step", "watched", "what")

    def __init__(self, dog: Watchdog, what: str, step: int, at_least: float):
        self.dog, self.what, self.step, self.at_least = dog, what, step, at_least

    def __enter__(self) -> None:
        self.span = self.dog.trace.span(self.what, PHASES, step=self.step)
        self.span.__enter__()
        self.watched = self.dog._thread is not None
        if self.watched:
            self.outer = self.dog._enter(self.what, self.step, self.at_least)

    def __exit__(self, kind, value, tb) -> bool:
        try:
            if self.watched:
                self.dog._leave(self.outer)
        finally:
            self.span.__exit__(kind, value, tb)
        return False


HEARTBEAT_PREFIX = "distbp-heartbeat-"
_BEAT_NAME = re.compile(r"^rank-\d+\.json(\.tmp)?$")  # what a watchdog leaves in its folder, and nothing else
_ABANDONED_EMPTY_S = 3600.0  # a folder with no heartbeat yet is a job starting, unless it is this old


def remove_abandoned_heartbeats(parent: str) -> None:
    """Remove heartbeat folders in `parent` left by jobs that ended abnormally: every rank that beat there
    was on this host and its process is gone (folders with another host's beats are left alone).

    Only real folders of this user's that hold nothing but heartbeats are touched: symlinks, other users'
    folders, and folders with anything else in them are left alone, and nothing is followed through a link
    (the folder is opened with O_NOFOLLOW, its entries read and removed relative to it)."""
    host = socket.gethostname()
    try:
        names = [n for n in os.listdir(parent) if n.startswith(HEARTBEAT_PREFIX)]
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError, ValueError, TypeError):  # gone meanwhile, being written, or not ours
            _remove_if_abandoned(os.path.join(parent, name), host)


def _remove_if_abandoned(folder: str, host: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a symlink: ELOOP/ENOTDIR
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return  # another user's: never ours to judge or delete
        entries = os.listdir(fd)
        if not all(_BEAT_NAME.match(e) for e in entries):
            return  # something that is not a heartbeat: not a folder a watchdog left
        beats = [_read_beat(fd, e) for e in entries if e.endswith(".json")]
        if not beats and time.time() - st.st_mtime < _ABANDONED_EMPTY_S:
            return  # a job that is starting: its first beat is on its way
        if all(isinstance(b, dict) and b.get("host") == host and not process_alive(b.get("pid")) for b in beats):
            for e in entries:
                os.unlink(e, dir_fd=fd)  # the entry itself, a link included, never what it points at
            os.rmdir(folder)
    finally:
        os.close(fd)


def _read_beat(dir_fd: int, name: str) -> dict:
    """One heartbeat, read by name in the open folder `dir_fd`, never through a symlink, only a regular file."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    with os.fdopen(fd) as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ValueError(f"{name} is not a regular file")
        return json.loads(fh.read(65536))
