"""Folders that hold distbp's state, safe against other users of the same machine.

On a shared login node another uid must not be able to plant what a run reads (a pickled Numba index, a
data-cache entry, a checkpoint) or make a clean-up delete files through a symlink. So every folder distbp
keeps state in (the Numba cache it sets, the data cache, checkpoint, heartbeat and trace folders) is:

- owned by this user (or root), and not writable by group or others: `check_private_dir` says so, or
  names the folder and the fix (`chmod go-w`). `DISTBP_SHARED_DIRS=1` also accepts group-writable folders
  whose group is one of this user's (a project's shared cache on a cluster), never world-writable ones;
- never entered through a symlink: `lstat`, `O_NOFOLLOW`, and names nobody can predict (`mkdtemp`).

Standard library only (floor 0).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# opt-in for a folder shared by one group on purpose (a project's cache on a cluster): group-writable folders
# are then accepted when their group is one of this user's; world-writable ones never are
SHARED_ENV = "DISTBP_SHARED_DIRS"


class UnsafeFolder(Exception):
    """A folder (or an entry in it) that another user could have written: the message names it and the fix."""


def me() -> int:
    return os.geteuid()


def group_sharing_allowed(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(SHARED_ENV, "").lower() in ("1", "yes", "true", "on")


def why_unsafe(path: str | os.PathLike, *, shared_ok: bool | None = None) -> str | None:
    """None when `path` is a real folder (not a symlink) owned by this user, or root, and not writable by others
    (nor by its group, unless group sharing is allowed and the group is one of this user's); else the reason."""
    p = os.fspath(path)
    shared = group_sharing_allowed() if shared_ok is None else shared_ok
    ancestor = _unsafe_ancestor(p, shared)
    if ancestor is not None:
        return ancestor
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return None  # made by us, safely, when needed (make_private_dir)
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link (distbp never keeps state behind one)"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid not in (me(), 0):
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_IWOTH:
        return "every user may write into it"
    if st.st_mode & stat.S_IWGRP and not (shared and _my_group(st.st_gid)):
        return f"its group may write into it (allow that with {SHARED_ENV}=1 for a group you trust)"
    return None


def _my_group(gid: int) -> bool:
    return gid in set(os.getgroups()) | {os.getegid()}


def _unsafe_ancestor(path: str, shared: bool) -> str | None:
    """The reason another user could swap `path` for a folder of theirs through one of the folders above it
    (the real ones, symlinks resolved), or None. Whoever may write into a folder may rename its entries,
    unless the folder is sticky (like /tmp); so every folder above must be this user's or root's (any owner
    with group sharing allowed) and writable by nobody else, or sticky."""
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    while True:
        try:
            st = os.stat(folder)
        except OSError:
            st = None  # not there (made later, by us) or not ours to look into
        if st is not None and not st.st_mode & stat.S_ISVTX:
            if st.st_uid not in (me(), 0) and not shared:
                return (f"the folder above it, {folder}, belongs to another user (uid {st.st_uid}), who could "
                        "replace it")
            if st.st_mode & stat.S_IWOTH:
                return f"every user may write into the folder above it, {folder}, and so replace it"
            if st.st_mode & stat.S_IWGRP and not (shared and _my_group(st.st_gid)):
                return (f"the group of the folder above it, {folder}, may write into it and so replace it "
                        f"(allow that with {SHARED_ENV}=1 for a group you trust)")
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def check_private_dir(path: str | os.PathLike, what: str) -> None:
    """Raise UnsafeFolder naming `what` (e.g. "the Numba cache NUMBA_CACHE_DIR"), the folder and the fix."""
    reason = why_unsafe(path)
    if reason is not None:
        raise UnsafeFolder(f"{what} {os.fspath(path)} is not safe to use: {reason}; another user could plant "
                           f"files there. Use a folder of your own (mkdir -m 700), or `chmod go-w` it")


def make_private_dir(path: str | os.PathLike, what: str) -> Path:
    """`path` made if missing (mode 0700 for the folders made here) and checked with check_private_dir."""
    p = Path(path)
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(p, what)
    return p


def owned_by_me(path: str | os.PathLike) -> bool:
    """True when `path` itself (not what a symlink points at) is a regular file or folder of this user."""
    try:
        st = os.lstat(os.fspath(path))
    except OSError:
        return False
    return st.st_uid == me() and (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))
