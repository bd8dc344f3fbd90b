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
