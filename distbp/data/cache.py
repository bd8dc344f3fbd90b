"""Generated datasets, and gzipped IDX files unpacked, kept on disk: made once per machine, then memory-mapped
by every rank of every job.

Every rank of a job draws the built-in synthetic data itself: 60000 x 784 float32 rows (188 MB) by default,
about 2 s per rank before its first step. With this cache the first job that draws a large set writes it
(one writer per entry: an exclusive lock file), and later jobs map the files: each rank reads only the pages
it uses, and the ranks of a node share them through the page cache.

An entry holds the arrays `data._build` made of the draw (the training rows and the test rows after the
held-out split) and the training rows' moments, so a cached load and a fresh one gather the same bits
(tests/unit/test_datacache.py checks it) and a cached load reads the rows once, to check them.

Another user must not be able to plant an entry (the key is predictable) or change one. So the cache folder
must be private (`host/files.why_unsafe`: yours, not writable by others; `DISTBP_SHARED_DIRS=1` for a group's
folder): an unsafe one is skipped, with one warning. Every entry and file is opened without following links
(O_NOFOLLOW, then checked by fstat: a regular file or folder of yours, or root's, not writable by others), and
meta.json records a SHA-256 of every array at write time, checked before the entry is trusted: an entry that
fails is removed and drawn again. (SHA-256 runs at about 1.8 GB/s with the CPU's SHA extensions: 0.1 s for the
default 188 MB set, which takes 1.6 s to draw; blake2b took twice as long here.)

A gzipped IDX file (`formats._idx`) is unpacked by `shared`: the first process to ask writes the entry,
a chunk at a time, while the others of the machine (the ranks of a node) wait for its lock to go, then all
map the one copy; its key is the file's identity (`file_entry`).

A writer holds `<entry>.lock`, which says its pid and host, and writes in `<entry>.tmp-<pid>@<host>-…`: a
writer killed on this host is recognised at once by the next job (its pid is gone), which removes its lock and
its temporary folder. A lock of another host is taken as stale after STALE_LOCK_S.

Where: `DISTBP_DATA_CACHE` (a folder; `off` turns the cache off), else the checkout's `.data_cache`, else
`$XDG_CACHE_HOME/distbp/data` (`~/.cache/distbp/data`). An entry is a folder `<name>-<key>` of .npy files and
a `meta.json`, written in a temporary folder and renamed into place, so a reader finds a whole entry or none;
an entry that does not read back (a file removed or cut short) counts as missing and is removed. The key
digests the generator's options, the seed, the test fraction, numpy's version and datasets.py's source, so
another generator makes another entry. Sets smaller than MIN_BYTES are not kept: they draw in well under a
second (and the test suite's small sets write nothing). The cache holds at most MAX_BYTES: a new entry
evicts the least recently used ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from distbp.host.files import me, why_unsafe
from distbp.host.launcher import launcher_rank
from distbp.host.procs import process_alive

ENV = "DISTBP_DATA_CACHE"
# sets of at least this many bytes are cached: 16 MiB draws in about 0.15 s here (benchmarks/synthetic_data.py
# draws the default 188 MB in 1.6 s)
MIN_BYTES = 16 << 20
# a lock file of another host older than this was left by a writer that died (one of this host whose pid is
# gone is stale at once): the next job may write the entry
STALE_LOCK_S = 600.0
# a writer's temporary folder: <entry>.tmp-<pid>@<host>-<random>
TMP_NAME = re.compile(r"(?P<entry>[a-z]+-[0-9a-f]{16})\.tmp-(?P<pid>\d+)@(?P<host>.*)-[a-z0-9_]+")
# the cache keeps at most this many bytes: a new entry evicts the least recently used ones (a sweep over
# seeds of the default set would otherwise leave 188 MB per seed)
MAX_BYTES = 2 << 30
# what entry_for names an entry: only such folders are ever evicted (DISTBP_DATA_CACHE may hold other things)
ENTRY_NAME = re.compile(r"[a-z]+-[0-9a-f]{16}")
# how long a process waits for another process of this machine that is writing the entry it needs (`shared`)
WAIT_S = 600.0


def cache_root() -> Path | None:
    """The cache folder (see the module's docstring), or None when DISTBP_DATA_CACHE=off."""
    chosen = os.environ.get(ENV, "")
    if chosen.lower() in ("off", "0", "no", "false"):
        return None
    if chosen:
        return Path(chosen)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists() and os.access(checkout, os.W_OK):
        return checkout / ".data_cache"
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(cache_home) / "distbp" / "data"


def entry_for(name: str, options: dict, seed: int, test_fraction: float, nbytes: int) -> Path | None:
    """The entry folder for generator `name` with `options` (all of them, defaults included), or None when
    the set (nbytes of features) is too small to keep or the cache is off."""
    root = cache_root()
    if root is None or nbytes < MIN_BYTES:
        return None
    source = hashlib.sha256(Path(__file__).with_name("datasets.py").read_bytes()).hexdigest()
    described = json.dumps({"name": name, "options": options, "seed": seed, "test_fraction": test_fraction,
                            "numpy": np.__version__, "datasets.py": source}, sort_keys=True)
    return root / f"{name}-{hashlib.sha256(described.encode()).hexdigest()[:16]}"


def file_entry(name: str, path: Path, nbytes: int) -> Path | None:
    """The entry folder for what is unpacked from file `path` (nbytes of it, e.g. a gzipped IDX's
    contents), keyed by the file's identity (its real path, device, inode, size and modification time, so a
    changed file makes another entry), or None when it is too small to keep or the cache is off."""
    st = path.stat()
    identity = {"path": str(path.resolve()), "dev": st.st_dev, "inode": st.st_ino, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}
    entry = entry_for(name, identity, 0, 0.0, nbytes)
    return entry if entry is not None and _has_room(entry.parent, nbytes) else None


def _has_room(root: Path, nbytes: int) -> bool:
    """Whether the file system of `root` (or of its nearest existing parent) has nbytes free, and a margin."""
    folder = root
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free >= nbytes + (64 << 20)
    except OSError:
        return False


def load(entry: Path) -> dict[str, np.ndarray] | None:
    """The entry's arrays by name (those named X… memory-mapped, read-only; the others in memory), or None if
    it is missing, untrusted (see the module's docstring) or does not read back whole with the digests it
    was written with (then it is removed, so that the next store replaces it)."""
    if not _root_trusted(entry.parent):
        return None
    try:
        st = os.lstat(entry)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return None  # a symlink (to another user's folder) or a file: never read, never followed
    if why_unsafe(entry) is not None:
        _remove(entry)  # another user's, or writable by others: not ours to trust
        return None
    try:
        meta = json.loads(_read_private(entry / "meta.json"))
        arrays = {}
        for key, shape in meta["shapes"].items():
            arrays[key] = a = _load_private(entry / f"{key}.npy", mmap=key.startswith("X"))
            if list(a.shape) != shape or a.dtype.str != meta["dtypes"][key]:
                raise ValueError(f"{key}.npy is {a.dtype} {a.shape}, meta.json says {meta['dtypes'][key]} {shape}")
            if digest(a) != meta["sha256"][key]:
                raise ValueError(f"{key}.npy is not what was written")
    except (OSError, ValueError, KeyError, TypeError):
        _remove(entry)
        return None
    try:
        os.utime(entry / "meta.json", follow_symlinks=False)  # used now: the last to be evicted
    except OSError:
        pass  # a cache someone else filled, read-only for us: still a whole entry
    return arrays


def digest(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), as meta.json records it."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def store(entry: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write arrays (by name: letters, digits, '_') as `entry` unless it exists or another process is
    writing it; True if this call wrote it.

    Never raises for the file system (read-only, full, racing writers): the cache only saves time."""
    root = entry.parent
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return False
    if not _root_trusted(root) or os.path.lexists(entry):
        return False
    lock = _lock_of(entry)
    if not _take_lock(lock) and not (_clear_if_stale(lock) and _take_lock(lock)):
        return False
    try:
        return _write(entry, lambda folder: _save(folder, arrays))
    finally:
        _release(lock)


def shared(entry: Path, write: Callable[[Path], dict]) -> dict[str, np.ndarray] | None:
    """The arrays of `entry` (as `load` gives them), made once per machine however many processes ask at once.

    Loaded when the entry is there. Else this process takes the entry's lock and calls write(folder), which
    writes .npy files into `folder` and returns their {"shapes", "dtypes", "sha256"} by name (as meta.json
    records them); or, while another live process holds the lock, it waits for that writer (polling, up to
    WAIT_S) and loads what it wrote. None when the cache cannot be used (off, unsafe, full, or a writer that
    did not finish in time): the caller then makes the arrays itself. A ValueError of `write` (bad data)
    propagates, after the lock and the temporary folder are removed.
    """
    arrays = load(entry)
    if arrays is not None:
        return arrays
    root = entry.parent
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    if not _root_trusted(root):
        return None
    lock, deadline = _lock_of(entry), time.monotonic() + WAIT_S
    while not (_take_lock(lock) or _clear_if_stale(lock) and _take_lock(lock)):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)  # another process (a rank beside us) writes the entry
        if not os.path.lexists(lock):
            arrays = load(entry)
            if arrays is not None:
                return arrays  # else its writer failed: take the lock and write it ourselves
    try:
        if load(entry) is None and not _write(entry, write):
            return None
    finally:
        _release(lock)
    return load(entry)


def _lock_of(entry: Path) -> Path:
    return entry.with_name(entry.name + ".lock")


def _release(lock: Path) -> None:
    try:
        os.unlink(lock)
    except OSError:
        pass


def _write(entry: Path, write: Callable[[Path], dict]) -> bool:
    """Under the entry's lock: write(folder) into a temporary folder, add meta.json, rename it into place
    (atomic: readers see the whole entry or none); True if written. An OSError (full disk) is False."""
    root, tmp = entry.parent, None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{entry.name}.tmp-{os.getpid()}@{socket.gethostname()}-", dir=root))
        (tmp / "meta.json").write_text(json.dumps(write(tmp)))
        os.rename(tmp, entry)
        tmp = None
        _evict(root, keep=entry)
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _save(folder: Path, arrays: dict[str, np.ndarray]) -> dict:
    meta = {"shapes": {}, "dtypes": {}, "sha256": {}}
    for key, a in arrays.items():
        a = np.ascontiguousarray(a)
        np.save(folder / f"{key}.npy", a, allow_pickle=False)
        meta["shapes"][key], meta["dtypes"][key], meta["sha256"][key] = list(a.shape), a.dtype.str, digest(a)
    return meta


def _root_trusted(root: Path) -> bool:
    """True when the cache folder is private (or missing); else False, with one warning per process."""
    try:
        reason = why_unsafe(root)
    except OSError:
        return False  # cannot be used at all (a path through a file): the store fails quietly anyway
    if reason is None:
        return True
    if str(root) not in _WARNED:
        _WARNED.add(str(root))
        if launcher_rank() == 0:
            print(f"distbp: warning: the data cache {root} is not used: {reason}; another user could plant data "
                  f"there. Fix: set {ENV} to a folder of your own (mkdir -m 700), or `chmod go-w` it "
                  f"({ENV}=off turns the cache off)", file=sys.stderr, flush=True)
    return False


_WARNED: set[str] = set()


def _open_private(path: Path) -> int:
    """A read-only descriptor of `path`, a regular file of this user (or root) that others cannot write; the
    last component is never followed (O_NOFOLLOW), and the check is on the open file (fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid not in (me(), 0) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        os.close(fd)
        raise ValueError(f"{path} is not a private file")
    return fd


def _read_private(path: Path) -> bytes:
    with os.fdopen(_open_private(path), "rb") as f:
        return f.read()


def _load_private(path: Path, mmap: bool) -> np.ndarray:
    fd = _open_private(path)
    try:  # /proc/self/fd/N is the file just checked, whatever happens to its name meanwhile
        return np.load(f"/proc/self/fd/{fd}", mmap_mode="r" if mmap else None, allow_pickle=False)
    finally:
        os.close(fd)  # a memory map keeps the file


def _take_lock(lock: Path) -> bool:
    """Make `lock` holding "pid host", atomically (link of a written file): never an empty lock to misjudge."""
    staged = lock.with_name(f"{lock.name}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        os.link(staged, lock)
        return True
    except OSError:
        return False
    finally:
        try:
            os.unlink(staged)
        except OSError:
            pass


def _clear_if_stale(lock: Path) -> bool:
    """Remove `lock` when its writer is dead (this host and its pid gone, or another host's and older than
    STALE_LOCK_S), with that writer's temporary folders; True if removed."""
    try:
        age = time.time() - os.lstat(lock).st_mtime
        pid, host = _read_private(lock).decode().split()
        pid = int(pid)
    except OSError:
        return False  # gone, or not ours to judge
    except (ValueError, UnicodeDecodeError):
        pid, host = None, None  # a lock of an older distbp, without pid and host: it ages out
    here = host == socket.gethostname()
    if here and process_alive(pid) or not here and age < STALE_LOCK_S:
        return False
    if pid is not None:
        _remove_temporaries(lock.parent, pid, host)
    try:
        os.unlink(lock)
    except OSError:
        return False
    return True


def _remove_temporaries(root: Path, pid: int | None = None, host: str | None = None) -> None:
    """Remove the temporary folders of dead writers of this host (of `pid` at `host`, when given)."""
    here = socket.gethostname()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        m = TMP_NAME.fullmatch(name)
        if m is None:
            continue
        writer = int(m["pid"]), m["host"]
        dead = writer == (pid, host) if pid is not None else m["host"] == here and not process_alive(int(m["pid"]))
        try:
            if dead and stat.S_ISDIR(os.lstat(root / name).st_mode) and why_unsafe(root / name) is None:
                shutil.rmtree(root / name, ignore_errors=True)  # rmtree never follows a link inside
        except OSError:
            continue  # removed meanwhile


def _evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries (by meta.json's time) until the cache holds at most MAX_BYTES;
    `keep` (just written) stays; dead writers' temporary folders go too. A reader that mapped an evicted entry
    keeps its pages (Linux unlinks lazily)."""
    _remove_temporaries(root)
    entries = []
    for entry in root.iterdir():
        try:
            if ENTRY_NAME.fullmatch(entry.name) and stat.S_ISDIR(os.lstat(entry).st_mode):  # no link, no .tmp-
                entries.append((os.lstat(entry / "meta.json").st_mtime,
                                sum(f.lstat().st_size for f in entry.iterdir()), entry))
        except OSError:
            continue  # removed meanwhile
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= MAX_BYTES:
            break
        if entry != keep:
            _remove(entry)
            total -= size


def _remove(entry: Path) -> None:
    """Move an entry (broken, or evicted) aside, atomically, so that no reader sees half of it; then delete it."""
    aside = entry.with_name(f"{entry.name}.broken-{os.getpid()}")
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
