"""The Numba cache, checked before Numba reads it: nothing another user planted is unpickled, nothing damaged
crashes a job.

Numba unpickles its cache's index (`.nbi`) and data (`.nbc`) files, so a file another user can write is code
that runs as you. Before Numba reads the cache folder (NUMBA_CACHE_DIR, or the folder distbp chooses):

- the folder must be private (`files.why_unsafe`: a real folder of yours, not writable by others). An unsafe
  folder is only a cache: distbp warns once and uses a private one, `~/.cache/distbp/numba` (mode 0700);
- every entry is checked with lstat: a symlink, a file or folder of another user, or a file others can write
  (and reach) is removed (a folder of another user, which we cannot empty, makes the whole folder unsafe);
- every `.nbi`/`.nbc` file of yours is parsed as a pickle by an unpickler that builds nothing (`_Inert`): a
  file that does not parse (garbage, cut short) is removed, so Numba recompiles its kernel and writes it anew,
  instead of an UnpicklingError ending the job.

`choose(candidate)` runs in the command line before numba loads (host.startup.prepare_environment); `check_loaded()`
at `distbp.fit` time, when numba is loaded already. Standard library only at import (floor 0).
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path

from distbp.host.files import group_sharing_allowed, make_private_dir, me, why_unsafe, UnsafeFolder

NUMBA_SUFFIXES = (".nbi", ".nbc")


def private_default() -> Path:
    """The per-user folder used instead of an unsafe one: $XDG_CACHE_HOME/distbp/numba (~/.cache/...)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache_home) / "distbp" / "numba"


def choose(candidate: str | os.PathLike,
           what: str = "the Numba cache NUMBA_CACHE_DIR") -> tuple[str, str | None, str | None]:
    """(the folder Numba may use, why candidate was not, what this process removed): `candidate` when it is
    safe, after removing untrusted or damaged files; else the private default (made 0700), else a fresh
    private temporary folder. Every rank decides alike, so one prints the first warning; the second is had by
    the one rank that removed the files (`clean`)."""
    if not os.path.lexists(candidate):
        try:  # made private here: numba's own makedirs would leave it as the umask says
            os.makedirs(candidate, mode=0o700, exist_ok=True)
        except OSError:
            pass  # numba finds another folder itself (a read-only file system)
    reason = why_unsafe(candidate)
    if reason is None:
        reason, removed = clean(candidate)
        if reason is None:
            return os.fspath(candidate), None, _removed_note(candidate, removed)
    fallback = private_default()
    try:
        if Path(os.path.abspath(candidate)) == Path(os.path.abspath(fallback)):
            raise UnsafeFolder(reason)
        make_private_dir(fallback, "the private Numba cache")
        fallback_reason, removed = clean(fallback)
        if fallback_reason is not None:
            raise UnsafeFolder(fallback_reason)
        chosen = os.fspath(fallback)
    except (OSError, UnsafeFolder):
        chosen, removed = tempfile.mkdtemp(prefix="distbp-numba-"), []  # compiles anew, but nobody else's code
    unsafe = (f"{what} {os.fspath(candidate)} is not safe to use: {reason}; another user could plant code there "
              f"that Numba would run. Using {chosen} instead. Fix: use a folder of your own (mkdir -m 700) or "
              f"`chmod go-w` it, or set NUMBA_CACHE_DIR to a private folder")
    return chosen, unsafe, _removed_note(chosen, removed)


def clean(root: str | os.PathLike) -> tuple[str | None, list[str]]:
    """Remove `root`'s untrusted and damaged Numba files (root and one level of folders, as Numba lays it out).
    Returns (why the folder cannot be used, or None; the paths this call removed).

    The ranks of a job clean the same folder at once: the removal is done under a lock on the folder (flock),
    each file judged again there, so one rank removes a file and says so (one warning per job), and a file
    Numba has meanwhile written anew is kept."""
    try:
        root_st = os.lstat(root)
    except FileNotFoundError:
        return None, []
    suspects = []
    for entry in _scandir(root):
        if _is_dir(entry):
            reason = why_unsafe(entry.path)
            if reason is not None:
                return f"its folder {entry.name} is not safe ({reason})", []
            suspects += [inner.path for inner in _scandir(entry.path) if _must_not_be_read(inner.path, root_st)]
        elif entry.is_symlink() or _must_not_be_read(entry.path, root_st):
            suspects.append(entry.path)
    if not suspects:
        return None, []
    removed = []
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for path in suspects:
            if (os.path.islink(path) or _must_not_be_read(path, root_st)) and not _unlink(path, removed):
                return f"{path} cannot be removed", removed
    finally:
        os.close(fd)  # releases the lock
    return None, removed


def check_loaded(is_root: bool = True) -> None:
    """At fit time, numba loaded: the folders distbp's cached kernels read are checked and cleaned as `choose`
    does; when one is unsafe, numba's CACHE_DIR (and NUMBA_CACHE_DIR, which numba re-reads) becomes a private
    folder and those kernels' caches are rebuilt on it (Dispatcher.enable_caching) before any is loaded.
    is_root: this rank says that a folder was unsafe (every rank finds it so)."""
    import numba  # reason: numba is loaded already when distbp.fit runs

    if (numba.config.CACHE_DIR or "numba's default") in _CHECKED:
        return
    if numba.config.CACHE_DIR:
        roots, dispatchers = {numba.config.CACHE_DIR}, None
    else:  # numba's own default: a __pycache__ beside each module, or ~/.cache/numba
        dispatchers = _distbp_dispatchers()
        roots = {d._cache.cache_path for d in dispatchers}
    for root in sorted(roots - _CHECKED):
        what = "the Numba cache" if numba.config.CACHE_DIR else "Numba's cache folder"
        chosen, unsafe, removed = choose(root, what)
        warn(unsafe if is_root else None, removed)
        _CHECKED.add(chosen)  # private now: nobody else can change it, so later fits need not look again
        if chosen != root:
            os.environ["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR = chosen
            for d in dispatchers or _distbp_dispatchers():
                d.enable_caching()  # a new cache object: its locator reads config.CACHE_DIR now
            return
    _CHECKED.add(numba.config.CACHE_DIR or "numba's default")


_CHECKED: set[str] = set()  # the folders check_loaded found safe in this process


def _distbp_dispatchers() -> list:
    """distbp's cached Numba kernels made so far, wherever they are kept (module attributes, factories' tables):
    all the live dispatchers whose function is distbp's (a walk of gc's objects, about 40 ms: only when needed)."""
    import gc  # reason: only at fit time

    from numba.core.caching import NullCache  # reason: numba is loaded already (check_loaded)
    from numba.core.dispatcher import Dispatcher  # reason: as above

    return [d for d in gc.get_objects() if isinstance(d, Dispatcher)
            and getattr(d.py_func, "__module__", "").startswith("distbp.")
            and not isinstance(getattr(d, "_cache", None), NullCache)]


def _must_not_be_read(path: str, root_st: os.stat_result) -> bool:
    """A Numba file that must not be read: a symlink, not a regular file, another user's, writable by someone
    who can reach it (group or others, through root's mode), or a pickle that does not parse. False for a
    file that is gone, or not Numba's (its .tmp files while it writes, distbp's warm-up marks)."""
    if not path.endswith(NUMBA_SUFFIXES):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (me(), 0):
        return True
    if st.st_mode & stat.S_IWOTH and root_st.st_mode & stat.S_IXOTH:
        return True
    if st.st_mode & stat.S_IWGRP and root_st.st_mode & stat.S_IXGRP and not group_sharing_allowed():
        return True
    return os.path.exists(path) and not _parses(path)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _parses(path: str) -> bool:
    """True when the file is whole pickles to its end (an index is two), read without building anything."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError:
        return False
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            _InertUnpickler(stream).load()
    except Exception:  # any way a pickle can be damaged: UnpicklingError, EOFError, ValueError, ...
        return False
    return len(data) > 0


class _Inert(dict):
    """What every global in a checked pickle becomes: callable, settable, appendable; runs nothing."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    __hash__ = object.__hash__  # a key of the index's dict (a signature's types)

    def __eq__(self, other):
        return self is other

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _Inert

    def persistent_load(self, pid):
        return None


def _scandir(path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _unlink(path: str, removed: list[str]) -> bool:
    try:
        os.unlink(path)  # a symlink itself, never what it points at
    except FileNotFoundError:
        return True  # gone already
    except OSError:
        return False
    removed.append(path)
    return True


def warn(*notes: str | None) -> None:
    for note in notes:
        if note:
            print(f"distbp: warning: {note}", file=sys.stderr, flush=True)


def _removed_note(root, removed: list[str]) -> str | None:
    if not removed:
        return None
    return (f"removed {len(removed)} damaged or untrusted Numba cache file(s) from {os.fspath(root)} (e.g. "
            f"{os.path.basename(removed[0])}): their kernels compile again")
