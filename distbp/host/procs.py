"""Processes of this host, as the lock and heartbeat code needs them."""

from __future__ import annotations

import os
from pathlib import Path


def process_alive(pid) -> bool:
    """True when a process with this pid runs on this host (an exited, unreaped zombie does not count)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process not yet reaped by its parent answers kill() too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
