"""Another user's hands, for the cache-safety tests: files planted as a second uid (setpriv, no account
needed), a Numba index that runs code when unpickled, and a private copy of the checkout's warm Numba cache."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest

OTHER_UID = 65534  # nobody
REPO = Path(__file__).resolve().parents[2]


def need_other_uid() -> None:
    """Planting as another uid needs root (and setpriv): in CI that must hold, so its absence fails there."""
    missing = None
    if os.geteuid() != 0:
        missing = "these cases plant files as a second uid, which needs root"
    elif shutil.which("setpriv") is None:
        missing = "setpriv (util-linux) is not installed"
    if missing:
        (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)(missing)


def as_other(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run cmd as uid/gid 65534 with no supplementary groups."""
    need_other_uid()
    return subprocess.run(["setpriv", "--reuid", str(OTHER_UID), "--regid", str(OTHER_UID), "--clear-groups",
                           *cmd], check=check, capture_output=True, text=True)


def open_folder(path: Path) -> Path:
    """A world-writable folder (sticky like /tmp), as a shared scratch cache would be."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o1777)
    return path


class Evil:
    """Unpickling this touches `marker` (the proof that a planted file ran code as the reader) and, with kill,
    kills the reader at once (a control run need not recompile what it failed to load)."""

    def __init__(self, marker: Path, kill: bool = False):
        self.command = f"touch {marker}" + (" && kill -9 $PPID" if kill else "")

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_pickle(marker: Path, kill: bool = False) -> bytes:
    return pickle.dumps(Evil(marker, kill))


def warm_numba_cache(dest: Path) -> Path:
    """A copy of the checkout's Numba cache (the suite's kernels, compiled), so that jobs on it start fast."""
    source = Path(os.environ.get("NUMBA_CACHE_DIR") or REPO / ".numba_cache")
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    return dest


def plant_evil_cache(root: Path, marker: Path) -> int:
    """As another uid: a copy of the warm cache in `root` (world-writable) whose every index is evil."""
    staging = root.parent / (root.name + ".staging")
    warm_numba_cache(staging)
    evil = root.parent / "evil.pickle"
    evil.write_bytes(evil_pickle(marker, kill=True))
    for p in [staging, *staging.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    evil.chmod(0o644)
    as_other("cp", "-r", f"{staging}/.", str(root))
    indexes = [p.relative_to(staging) for p in staging.rglob("*.nbi")]
    for rel in indexes:
        as_other("cp", str(evil), str(root / rel))
    shutil.rmtree(staging)
    return len(indexes)


def reachable_tmp() -> Path:
    """A fresh folder that the second uid can reach (pytest's tmp_path, 0700 under root, is not); the caller
    removes it."""
    import tempfile  # reason: only the tests that plant files need it

    path = Path(tempfile.mkdtemp(prefix="distbp-caches-"))
    path.chmod(0o755)
    return path
