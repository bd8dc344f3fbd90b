"""The data cache: a large generated set is drawn once, then memory-mapped with the same bits; a cache entry
is whole or absent, and nothing about the cache can fail a load."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distbp.data import cache as datacache
from distbp.data import datasets as data
from distbp.data.datasets import load_dataset

SPEC = "synthetic:rows=3000,features=24,classes=5"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private cache folder that keeps every set, however small (tests use small ones)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(datacache.ENV, str(folder))
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    return folder


def entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def gathered(dataset) -> list[np.ndarray]:
    """Every split's rows as training gathers them (float32, scaled) and their labels, plus the scaling."""
    out = [dataset.train.offset, dataset.train.factor]
    for split in (dataset.train, dataset.test):
        if split is None:
            continue
        rows = np.arange(split.n_rows, dtype=np.int64)[::-1].copy()  # any order
        X, y = np.empty((split.n_rows, dataset.n_features), np.float32), np.empty(split.n_rows, np.int64)
        split.gather(rows, X, y)
        out += [X, y]
    return out


def assert_same_bits(a, b):
    assert (a.name, a.n_features, a.n_classes, a.scaling) == (b.name, b.n_features, b.n_classes, b.scaling)
    assert a.fingerprint() == b.fingerprint()
    for u, v in zip(gathered(a), gathered(b), strict=True):
        assert u.dtype == v.dtype and np.array_equal(u, v)


@pytest.mark.parametrize("spec, test_fraction, scale", [
    (SPEC, 0.1, "auto"),                              # a held-out split of the draw
    (SPEC + ",test=300", 0.1, "minmax"),              # the generator's own test rows
    (SPEC, 0.0, "standardize"),                       # no test split
])
def test_a_cached_set_gathers_the_bits_of_a_fresh_draw(cache, monkeypatch, spec, test_fraction, scale):
    first = load_dataset(spec, test_fraction=test_fraction, scale=scale)  # drawn, then written
    assert len(entries(cache)) == 1
    again = load_dataset(spec, test_fraction=test_fraction, scale=scale)
    assert isinstance(again.train.X, np.memmap) and again.from_cache, "the second load should map the cache's files"
    monkeypatch.setenv(datacache.ENV, "off")
    drawn = load_dataset(spec, test_fraction=test_fraction, scale=scale)
    assert not isinstance(drawn.train.X, np.memmap) and not drawn.from_cache and not first.from_cache
    assert_same_bits(again, drawn)
    assert_same_bits(first, drawn)


def test_another_seed_option_or_fraction_is_another_entry(cache):
    load_dataset(SPEC)
    load_dataset(SPEC, seed=1)
    load_dataset(SPEC.replace("classes=5", "classes=6"))
    load_dataset(SPEC, test_fraction=0.2)
    load_dataset(SPEC, scale="minmax")  # scaling is computed after the cache: the same entry
    assert len(entries(cache)) == 4


def test_small_sets_and_a_cache_turned_off_write_nothing(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(datacache.ENV, str(folder))
    load_dataset(SPEC)  # 3000 x 24 floats: below MIN_BYTES
    assert not folder.exists()
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    monkeypatch.setenv(datacache.ENV, "off")
    load_dataset(SPEC)
    assert not folder.exists()


def test_the_default_synthetic_set_is_large_enough_to_be_cached():
    keys = data._synthetic_options("")
    assert 4 * keys["rows"] * keys["features"] >= datacache.MIN_BYTES


@pytest.mark.parametrize("damage", ["remove X", "cut X short", "remove meta", "rewrite meta"])
def test_a_damaged_entry_is_drawn_again_and_replaced(cache, damage):
    reference = load_dataset(SPEC)
    entry, = entries(cache)
    if damage == "remove X":
        (entry / "X.npy").unlink()
    elif damage == "cut X short":
        with open(entry / "X.npy", "r+b") as fh:
            fh.truncate((entry / "X.npy").stat().st_size // 2)
    elif damage == "remove meta":
        (entry / "meta.json").unlink()
    else:
        (entry / "meta.json").write_text('{"shapes": {"X": [1, 1]}, "dtypes": {"X": "<f4"}}')
    again = load_dataset(SPEC)
    assert not isinstance(again.train.X, np.memmap), "a damaged entry must not be read"
    assert_same_bits(again, reference)
    assert [e.name for e in entries(cache)] == [entry.name]  # written again, whole
    assert isinstance(load_dataset(SPEC).train.X, np.memmap)


def test_a_full_cache_evicts_the_least_recently_used_entries(cache, monkeypatch):
    def entry(seed: int) -> Path:
        return datacache.entry_for("synthetic", data._synthetic_options(SPEC.partition(":")[2]), seed, 0.1, 0)

    theirs = cache / "my-runs"  # a folder of the user's beside the entries: never evicted
    theirs.mkdir(parents=True)
    (theirs / "meta.json").write_text("{}")
    load_dataset(SPEC, seed=0)
    one = sum(f.stat().st_size for f in entry(0).iterdir())
    monkeypatch.setattr(datacache, "MAX_BYTES", 2 * one)  # room for two entries
    for seed in (1, 0, 2):  # seed 0 used again after seed 1 was written: seed 1 is the least recently used
        time.sleep(0.02)
        load_dataset(SPEC, seed=seed)
    assert entries(cache) == sorted([entry(0), entry(2), theirs])
    time.sleep(0.02)
    load_dataset(SPEC, seed=1)  # drawn again; now seed 0 is the oldest
    assert entries(cache) == sorted([entry(1), entry(2), theirs])


def test_a_writer_holding_the_lock_is_left_alone_and_a_stale_lock_is_cleared(cache):
    entry = datacache.entry_for("synthetic", data._synthetic_options(SPEC.partition(":")[2]), 0, 0.1, 0)
    cache.mkdir()
    lock = entry.with_name(entry.name + ".lock")
    lock.touch()
    load_dataset(SPEC)
    assert entries(cache) == [], "another process is writing this entry"
    old = time.time() - datacache.STALE_LOCK_S - 1
    os.utime(lock, (old, old))
    load_dataset(SPEC)  # clears the dead writer's lock
    load_dataset(SPEC)  # and writes
    assert [e.name for e in entries(cache)] == [entry.name]
    assert not lock.exists()


def test_an_unwritable_cache_does_not_fail_the_load(tmp_path, monkeypatch):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv(datacache.ENV, str(blocker / "cache"))  # cannot be made: its parent is a file
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    assert load_dataset(SPEC).train.n_rows == 2700


def test_a_read_only_cache_is_read(cache, monkeypatch):
    load_dataset(SPEC)
    entry, = entries(cache)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")
    monkeypatch.setattr(os, "utime", read_only)
    monkeypatch.setattr(os, "rename", read_only)
    assert isinstance(load_dataset(SPEC).train.X, np.memmap)
    assert entries(cache) == [entry]


def test_processes_racing_to_write_one_entry_leave_one_whole_entry(cache, monkeypatch):
    # four processes draw the same set at once, as the ranks of a first job do; each loads what it drew
    code = f"from distbp.data import cache, datasets; cache.MIN_BYTES = 0; datasets.load_dataset({SPEC!r})"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(entries(cache)) == 1
    assert not list(cache.glob("*.lock")) and not list(cache.glob("*.tmp-*"))
    cached = load_dataset(SPEC)
    assert isinstance(cached.train.X, np.memmap)
    monkeypatch.setenv(datacache.ENV, "off")
    assert_same_bits(cached, load_dataset(SPEC))


# ---- another user's entries, damaged entries, killed writers (issue 27) ----

@pytest.fixture
def reachable(monkeypatch):
    """A folder the second uid can reach, and a cache that keeps small sets."""
    from caches import reachable_tmp  # reason: only these cases plant files as another uid

    path = reachable_tmp()
    path.chmod(0o1777)  # the other uid makes its own folders here
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    monkeypatch.setattr(datacache, "_WARNED", set())
    yield path
    import shutil  # reason: clean-up of what the other uid made (as root)
    shutil.rmtree(path, ignore_errors=True)


def flipped_entry(staging: Path) -> Path:
    """A whole, self-consistent entry for SPEC (digests recomputed) whose training labels are flipped."""
    import json  # reason: only to forge an entry

    os.environ[datacache.ENV] = str(staging)
    try:
        load_dataset(SPEC)
    finally:
        del os.environ[datacache.ENV]
    entry, = entries(staging)
    y = np.load(entry / "y.npy")
    np.save(entry / "y.npy", (y.max() - y).astype(y.dtype))
    meta = json.loads((entry / "meta.json").read_text())
    meta["sha256"]["y"] = datacache.digest(np.load(entry / "y.npy"))
    (entry / "meta.json").write_text(json.dumps(meta))
    for p in [staging, entry, *entry.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return entry


def fresh_labels() -> np.ndarray:
    return load_dataset(SPEC).train.y.copy()  # drawn: the callers turn the cache off first


def test_an_entry_planted_in_a_world_writable_cache_is_never_loaded(reachable, monkeypatch, capsys):
    from caches import as_other, open_folder  # reason: only these cases plant files as another uid

    monkeypatch.setenv(datacache.ENV, "off")
    truth = fresh_labels()
    forged = flipped_entry(reachable / "staging")
    root = open_folder(reachable / "shared")
    as_other("cp", "-r", str(forged), str(root / forged.name))
    monkeypatch.setenv(datacache.ENV, str(root))
    for _ in range(2):
        dataset = load_dataset(SPEC)
        assert not dataset.from_cache and np.array_equal(dataset.train.y, truth)
    err = capsys.readouterr().err
    assert err.count("distbp: warning:") == 1 and str(root) in err and "chmod go-w" in err, err
    assert (root / forged.name).is_dir()  # another user's: left where it is, only not read


def test_an_entry_of_another_user_or_a_symlink_to_one_is_not_trusted(reachable, monkeypatch):
    from caches import as_other  # reason: only these cases plant files as another uid

    monkeypatch.setenv(datacache.ENV, "off")
    truth = fresh_labels()
    forged = flipped_entry(reachable / "staging")
    theirs = reachable / "theirs"
    as_other("cp", "-r", str(forged), str(theirs))  # the other user's folder, with the forged entry's files
    root = reachable / "mine"
    root.mkdir(mode=0o700)
    (root / forged.name).symlink_to(theirs)
    monkeypatch.setenv(datacache.ENV, str(root))
    dataset = load_dataset(SPEC)
    assert not dataset.from_cache and np.array_equal(dataset.train.y, truth)
    assert sorted(p.name for p in theirs.iterdir()) == sorted(p.name for p in forged.iterdir())  # untouched
    assert (root / forged.name).is_symlink()  # the link is not replaced either: the set is drawn each time
    (root / forged.name).unlink()
    root.chmod(0o777)  # once open: the other user plants the entry itself, then the folder is closed again
    as_other("cp", "-r", str(forged), str(root / forged.name))
    root.chmod(0o700)
    dataset = load_dataset(SPEC)
    assert not dataset.from_cache and np.array_equal(dataset.train.y, truth)


def test_an_array_changed_in_place_fails_its_digest_and_is_drawn_again(cache):
    first = load_dataset(SPEC)
    entry, = entries(cache)
    X = np.load(entry / "X.npy", mmap_mode="r+")
    X[5, 3] += 1.0  # same shape, same dtype, same size: only the digest tells
    X.flush()
    del X
    again = load_dataset(SPEC)
    assert not again.from_cache
    assert all(np.array_equal(a, b) for a, b in zip(gathered(first), gathered(again)))
    third = load_dataset(SPEC)  # written anew, whole: trusted again
    assert third.from_cache and all(np.array_equal(a, b) for a, b in zip(gathered(first), gathered(third)))


def test_an_entry_without_digests_is_drawn_again(cache):
    import json  # reason: only to write an entry of an older distbp

    load_dataset(SPEC)
    entry, = entries(cache)
    meta = json.loads((entry / "meta.json").read_text())
    del meta["sha256"]
    (entry / "meta.json").write_text(json.dumps(meta))
    assert not load_dataset(SPEC).from_cache
    assert load_dataset(SPEC).from_cache


WRITER = """
import os, sys, time
import numpy as np
from distbp.data import cache as datacache
from distbp.data.datasets import load_dataset
datacache.MIN_BYTES = 0
saving = np.save
def slow_save(*args, **kwargs):  # the writer is killed while it writes
    saving(*args, **kwargs)
    print("writing", flush=True)
    time.sleep(60)
np.save = slow_save
load_dataset(sys.argv[1])
"""


def test_a_killed_writer_leaves_nothing_that_outlives_the_next_job(cache):
    cache.mkdir(mode=0o700)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, SPEC], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, datacache.ENV: str(cache)})
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    leftovers = sorted(p.name for p in cache.iterdir())
    assert any(".tmp-" in name for name in leftovers) and any(name.endswith(".lock") for name in leftovers)
    assert not load_dataset(SPEC).from_cache  # at once, no 10-minute wait: the lock's pid is gone
    entry, = entries(cache)
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # its lock and temporary folder removed
    assert load_dataset(SPEC).from_cache


def test_the_lock_of_a_live_writer_on_this_host_is_left_alone(cache):
    import socket  # reason: only to write a live writer's lock

    cache.mkdir(mode=0o700)
    entry = data.cache_entry(SPEC)
    lock = entry.with_name(entry.name + ".lock")
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")  # pytest's parent: alive
    assert not load_dataset(SPEC).from_cache
    assert entries(cache) == [] and lock.exists()
