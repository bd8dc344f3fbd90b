"""Helpers for the checkpoint, lock and heartbeat tests: another user's files, and a small full disk.

Another user is uid 65534 (no account needed), reached with `setpriv` when the suite runs as root; the
file is planted through a folder the test opens as that user's working directory, so none of the folders
above it need be open to that user. A small disk is a tmpfs mounted for the test (root only).
Where the suite cannot do either, the test is skipped, except in CI (CI=true), where it fails: a security
or full-disk case must never be skipped silently there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest

OTHER_UID = 65534


def cannot(why: str):
    """Skip (fail in CI) a test that needs what this machine cannot give."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{why}: in CI this test must run")
    pytest.skip(why)


def need_another_user() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        cannot("planting another user's files needs root and setpriv")


def as_other_user(cmd: list[str], cwd, gid: int = OTHER_UID, data: bytes | None = None) -> None:
    """Run cmd as uid 65534 (group `gid`, no other groups) in folder `cwd`, which it must be able to write."""
    need_another_user()
    done = subprocess.run(["setpriv", "--reuid", str(OTHER_UID), "--regid", str(gid), "--clear-groups", *cmd],
                          cwd=cwd, input=data, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr.decode(errors="replace")


def plant_file(folder, name: str, data: bytes, gid: int = OTHER_UID) -> None:
    """folder/name written by another user, with `data`."""
    as_other_user(["sh", "-c", 'cat > "$1"', "sh", name], folder, gid, data)


def plant_symlink(folder, name: str, target) -> None:
    """folder/name, a symlink to `target`, made by another user."""
    as_other_user(["ln", "-s", str(target), name], folder)


@contextlib.contextmanager
def small_tmpfs(size_bytes: int):
    """A tmpfs of `size_bytes` (rounded up to pages) mounted on a fresh folder; unmounted and removed after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        cannot("mounting a small tmpfs needs root")
    where = tempfile.mkdtemp(prefix="distbp-full-disk-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0700", "tmpfs", where],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(where)
        cannot(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], capture_output=True)
        os.rmdir(where)
