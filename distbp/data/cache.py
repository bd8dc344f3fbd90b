"""Generated datasets kept on disk: drawn once per machine, then memory-mapped by every rank of every job.

Every rank of a job draws the built-in synthetic data itself: 60000 x 784 float32 rows (188 MB) by default,
about 2 s per rank before its first step. With this cache the first job that draws a large set writes it
(one writer per entry: an exclusive lock file), and later jobs map the files: each rank reads only the pages
it uses, and the ranks of a node share them through the page cache.

An entry holds the arrays `data._build` made of the draw (the training rows and the test rows after the
held-out split) and the training rows' moments, so a cached load and a fresh one gather the same bits
(tests/unit/test_datacache.py checks it) and a cached load reads the rows once, to check them.

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
import tempfile
import time
from pathlib import Path

import numpy as np

ENV = "DISTBP_DATA_CACHE"
# sets of at least this many bytes are cached: 16 MiB draws in about 0.15 s here (benchmarks/synthetic_data.py
# draws the default 188 MB in 1.6 s)
MIN_BYTES = 16 << 20
# a lock file older than this was left by a writer that died: the next job may write the entry
STALE_LOCK_S = 600.0
# the cache keeps at most this many bytes: a new entry evicts the least recently used ones (a sweep over
# seeds of the default set would otherwise leave 188 MB per seed)
MAX_BYTES = 2 << 30
# what entry_for names an entry: only such folders are ever evicted (DISTBP_DATA_CACHE may hold other things)
ENTRY_NAME = re.compile(r"[a-z]+-[0-9a-f]{16}")


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


def load(entry: Path) -> dict[str, np.ndarray] | None:
    """The entry's arrays by name (those named X… memory-mapped, read-only; the others in memory), or None if
    it is missing or does not read back whole (then it is removed, so that the next store replaces it)."""
    if not entry.is_dir():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        arrays = {}
        for key, shape in meta["shapes"].items():
            a = np.load(entry / f"{key}.npy", mmap_mode="r" if key.startswith("X") else None, allow_pickle=False)
            if list(a.shape) != shape or a.dtype.str != meta["dtypes"][key]:
                raise ValueError(f"{key}.npy is {a.dtype} {a.shape}, meta.json says {meta['dtypes'][key]} {shape}")
            arrays[key] = a
    except (OSError, ValueError, KeyError, TypeError):
        _remove(entry)
        return None
    try:
        os.utime(entry / "meta.json")  # used now: the last to be evicted
    except OSError:
        pass  # a cache someone else filled, read-only for us: still a whole entry
    return arrays


def store(entry: Path, arrays: dict[str, np.ndarray]) -> bool:
    """Write arrays (by name: letters, digits, '_') as `entry` unless it exists or another process is
    writing it; True if this call wrote it.

    Never raises for the file system (read-only, full, racing writers): the cache only saves time."""
    if entry.is_dir():
        return False
    lock = entry.with_name(entry.name + ".lock")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        _clear_if_stale(lock)
        return False
    except OSError:
        return False
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".tmp-", dir=entry.parent))
        meta = {"shapes": {}, "dtypes": {}}
        for key, a in arrays.items():
            a = np.ascontiguousarray(a)
            np.save(tmp / f"{key}.npy", a, allow_pickle=False)
            meta["shapes"][key], meta["dtypes"][key] = list(a.shape), a.dtype.str
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, entry)  # atomic: readers see the whole entry or none
        tmp = None
        _evict(entry.parent, keep=entry)
        return True
    except OSError:
        return False
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)
        try:
            os.unlink(lock)
        except OSError:
            pass


def _evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries (by meta.json's time) until the cache holds at most MAX_BYTES;
    `keep` (just written) stays. A reader that mapped an evicted entry keeps its pages (Linux unlinks lazily)."""
    entries = []
    for entry in root.iterdir():
        try:
            if ENTRY_NAME.fullmatch(entry.name) and entry.is_dir():  # not .tmp-, .broken-, nor a user's folder
                entries.append(((entry / "meta.json").stat().st_mtime, sum(f.stat().st_size for f in entry.iterdir()),
                                entry))
        except OSError:
            continue  # removed meanwhile
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries):
        if total <= MAX_BYTES:
            break
        if entry != keep:
            _remove(entry)
            total -= size


def _clear_if_stale(lock: Path) -> None:
    try:
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            os.unlink(lock)
    except OSError:
        pass


def _remove(entry: Path) -> None:
    """Move an entry (broken, or evicted) aside, atomically, so that no reader sees half of it; then delete it."""
    aside = entry.with_name(f"{entry.name}.broken-{os.getpid()}")
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)
