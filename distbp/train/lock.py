"""One job per checkpoint directory: DIR/.distbp-lock names the job (host, pid) that holds it.

Only the root of a job takes, refreshes and releases the lock (`distbp.train.runstate`); a lock whose
holder is gone is taken over. Plain file handling; no MPI here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from distbp.host.procs import process_alive
from distbp.train.checkpoint import CheckpointError, warn_stderr

LOCK_NAME = ".distbp-lock"
LOCK_STALE_S = 600.0  # a holder on another host that has not refreshed its lock for this long is gone


def lock_directory(directory: str | Path, host: str, pid: int, warn: Callable[[str], None] = warn_stderr) -> Path:
    """Take DIR/.distbp-lock for this job (host, pid), or raise CheckpointError naming the job holding it.

    A lock is stale, and taken over with a warning, when its holder was on this host and its
    process is gone, or when it was not refreshed (`refresh_lock`) for LOCK_STALE_S seconds. The
    same process may take its own lock again (one process running several runs in turn).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    record = json.dumps({"host": host, "pid": pid, "time": _now()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is not None and not _stale(path, holder, host, pid):
                raise CheckpointError(
                    f"{directory} is in use by another job (pid {holder.get('pid')} on {holder.get('host')}); "
                    f"one job per --checkpoint-dir. If that job is gone, delete {path}") from None
            if holder is not None and holder.get("pid") != pid:
                warn(f"taking over {path}: its job (pid {holder.get('pid')} on {holder.get('host')}) is gone")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(record)
        return path
    raise CheckpointError(f"{path}: could not take the lock (another job keeps taking it)")


def refresh_lock(path: str | Path) -> None:
    """Mark the lock as held now (its holder calls this now and then)."""
    try:
        os.utime(path)
    except OSError:
        pass


def unlock_directory(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written or unreadable: treat as stale
    return holder if isinstance(holder, dict) else None


def _stale(path: Path, holder: dict, host: str, pid: int) -> bool:
    if holder.get("host") == host:
        return holder.get("pid") == pid or not process_alive(holder.get("pid"))
    try:
        return _now() - path.stat().st_mtime > LOCK_STALE_S
    except OSError:
        return True


def _now() -> float:
    return time.time()
