"""One job per checkpoint directory: DIR/.distbp-lock names the job (host, pid, time) that holds it.

Only the root of a job takes, refreshes and releases the lock (`distbp.train.runstate`); a lock whose
holder is gone is taken over. Plain file handling; no MPI here.

The lock is exclusive because a lock file is never seen half-made: its content is written into a private
temporary file first, which `os.link` then makes visible under the lock's name, atomically, failing when a
lock is already there. So whether a lock is stale is decided from its content only, never from an empty
or half-written file: its holder was on this host and its process is gone, or it was on another host and
has not refreshed the lock's time for LOCK_STALE_S. A stale lock is removed only by the one taker that
holds DIR/.distbp-lock.takeover (itself taken with os.link), after checking the lock is still the very file it
judged stale; so jobs taking over the same dead lock at once never delete each other's fresh one, and one
of them gets it. (A takeover file left by a taker that died within that millisecond is stale like a lock, and
moved aside: renamed, checked to be the file judged stale, else put back.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from distbp.host.procs import process_alive
from distbp.train.checkpoint import CheckpointError, warn_stderr

LOCK_NAME = ".distbp-lock"
LOCK_STALE_S = 600.0  # a holder on another host that has not refreshed its lock for this long is gone
TAKEOVER_NAME = LOCK_NAME + ".takeover"
TAKEOVER_STALE_S = 60.0  # a takeover lasts milliseconds: a takeover file on another host this old is a dead taker's
_TEMP_PREFIX = LOCK_NAME + "-"
_TEMP_SUFFIX = ".tmp"
_ATTEMPTS = 5


def lock_directory(directory: str | Path, host: str, pid: int, warn: Callable[[str], None] = warn_stderr) -> Path:
    """Take DIR/.distbp-lock for this job (host, pid), or raise CheckpointError naming the job holding it.

    A lock is stale, and taken over with a warning, when its holder was on this host and its
    process is gone, or when it was not refreshed (`refresh_lock`) for LOCK_STALE_S seconds. The
    same process may take its own lock again (one process running several runs in turn).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    for _ in range(_ATTEMPTS):
        if _publish(path, _record(host, pid), replace=False):
            return path
        found = _read_lock(path)
        if found is None:
            continue  # released between our link and our read: try again
        seen, holder = found
        if holder is None:
            raise CheckpointError(f"{path} is not a distbp lock (no holder in it); if no job uses {directory}, "
                                  f"delete {path}")
        if not _stale(holder, host, pid):
            raise CheckpointError(
                f"{directory} is in use by another job (pid {holder.get('pid')} on {holder.get('host')}); "
                f"one job per --checkpoint-dir. If that job is gone, delete {path}")
        if _remove_stale(path, seen, host, pid) and (holder.get("pid") != pid or holder.get("host") != host):
            warn(f"taking over {path}: its job (pid {holder.get('pid')} on {holder.get('host')}) is gone")
    raise CheckpointError(f"{path}: could not take the lock (another job keeps taking it)")


def refresh_lock(path: str | Path) -> None:
    """Mark the lock as held now (its holder calls this now and then): its content gets the time of now.

    Only our own lock is rewritten (a lock another job took over is left to it); a failure (a full disk) is
    ignored: the lock stays, with its older time."""
    path = Path(path)
    found = _read_lock(path)
    if found is not None and _ours(found[1]):
        with contextlib.suppress(OSError):  # ENOSPC, EDQUOT: the lock stays as it was
            _publish(path, _record(socket.gethostname(), os.getpid()), replace=True)


def unlock_directory(path: str | Path) -> None:
    """Release our lock: removed only while it still names this process (never another job's)."""
    path = Path(path)
    found = _read_lock(path)
    if found is not None and _ours(found[1]):
        path.unlink(missing_ok=True)


def _record(host: str, pid: int) -> str:
    return json.dumps({"host": host, "pid": pid, "time": _now()})


def _publish(path: Path, record: str, replace: bool) -> bool:
    """Write `record` into a temporary file beside `path`, then make it `path` at once: os.link, which fails
    (False) when a lock is there, or, for `replace`, os.replace. The temporary file never stays behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o644)  # anyone who may use the folder may read who holds it
        with os.fdopen(fd, "w") as fh:
            fh.write(record)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _read_lock(path: Path) -> tuple[tuple, dict | None] | None:
    """(what was seen, holder) of the lock file; None when it is gone; holder None when it holds no lock record.

    What was seen is the file's inode and content: an inode number alone may be reused at once by the next lock
    file, the content (pid, host, time) tells two locks apart."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # a symlink, or unreadable: not a lock of ours
        try:
            return (os.lstat(path).st_ino, None), None
        except FileNotFoundError:
            return None
    with os.fdopen(fd) as fh:
        inode = os.fstat(fh.fileno()).st_ino
        try:
            text = fh.read(4096)
            holder = json.loads(text)
        except (OSError, ValueError):
            return (inode, None), None
    return (inode, text), holder if isinstance(holder, dict) and "pid" in holder and "host" in holder else None


def _stale(holder: dict, host: str, pid: int, stale_s: float = LOCK_STALE_S) -> bool:
    # from the content only: on this host the holder's process tells; elsewhere the time of its last refresh
    if holder.get("host") == host:
        return holder.get("pid") == pid or not process_alive(holder.get("pid"))
    when = holder.get("time")
    return not isinstance(when, (int, float)) or _now() - when > stale_s


def _remove_stale(path: Path, seen: tuple, host: str, pid: int) -> bool:
    """Remove the lock file `seen`, judged stale, if it is still the lock: True when this taker removed it.

    Only the holder of the takeover file removes a stale lock; another taker holding it makes this one try
    again (and meet the lock that one takes)."""
    takeover = path.with_name(TAKEOVER_NAME)
    if not _publish(takeover, _record(host, pid), replace=False):
        found = _read_lock(takeover)
        if found is not None and (found[1] is None or _stale(found[1], host, pid, TAKEOVER_STALE_S)):
            _move_aside(takeover, found[0])  # a dead taker's
        return False
    try:
        found = _read_lock(path)
        if found is None or found[0] != seen:
            return False  # released or taken meanwhile
        path.unlink()
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            takeover.unlink()


def _ours(holder: dict | None) -> bool:
    return holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _move_aside(path: Path, seen: tuple) -> None:
    """Remove the stale file `seen` at `path`: renamed to a name of our own first, so that what is removed is the
    file judged stale. Had another taker put a fresh one there meanwhile, that one is put back where it was."""
    aside = path.with_name(f"{_TEMP_PREFIX}stale-{uuid.uuid4().hex}{_TEMP_SUFFIX}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another taker removed it first
    try:
        if _read_lock(aside)[0] != seen:
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)  # not the stale one: back under the lock's name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


def _now() -> float:
    return time.time()
