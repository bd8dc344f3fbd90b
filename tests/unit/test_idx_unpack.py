"""A gzipped IDX (MNIST as its mirrors ship it) is decompressed once per machine, into the data cache, and every
rank maps that copy: the ranks of a node hold the data once, not a decompressed copy each (issue 27 measured
2.1x the data per rank). A stream that is cut short leaves nothing behind; without a cache each rank
decompresses its own copy, as before."""

import gzip
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distbp.data import cache as datacache
from distbp.data.datasets import load_dataset

ROWS = 24_000  # 24,000 images of 28x28 bytes: 18.8 MB, above the data cache's 16 MiB threshold
IMAGE_BYTES = ROWS * 28 * 28


def idx_header(dims: list[int], code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes()


@pytest.fixture(scope="module")
def mnist_gz(tmp_path_factory):
    """A folder of gzipped MNIST-style train images and labels (random pixels)."""
    folder = tmp_path_factory.mktemp("mnist")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, IMAGE_BYTES, dtype=np.uint8)
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as out:
        out.write(idx_header([ROWS, 28, 28]) + pixels.tobytes())
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as out:
        out.write(idx_header([ROWS]) + rng.integers(0, 10, ROWS, dtype=np.uint8).tobytes())
    return folder, hashlib.sha256(pixels.tobytes()).hexdigest()


LOAD = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from distbp.data import formats
    from distbp.data.datasets import load_dataset

    def status(key):  # kB in /proc/self/status
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    unpacked = []
    real_unpack = formats._unpack_idx
    formats._unpack_idx = lambda *a: unpacked.append(1) or real_unpack(*a)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak resident size (VmHWM) starts again from now
    rss, anon = status("VmRSS"), status("RssAnon")
    data = load_dataset(sys.argv[1], test_fraction=0.0)
    X = data.train.X
    print(json.dumps({"unpacked": len(unpacked), "mapped": isinstance(X, np.memmap),
                      "sha256": hashlib.sha256(np.ascontiguousarray(X)).hexdigest(),
                      "peak_growth": status("VmHWM") - rss, "anon_growth": status("RssAnon") - anon}))
""")


def load_in_processes(folder, cache, n: int) -> list[dict]:
    """Load the folder in n processes started together (the ranks of one node), each with one thread."""
    env = dict(os.environ, DISTBP_DATA_CACHE=str(cache), MPI_LOCALNRANKS=str(n), OMP_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", LOAD, str(folder)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(n)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_the_ranks_of_a_node_decompress_once_and_map_one_copy(mnist_gz, tmp_path):
    folder, pixels = mnist_gz
    ranks = load_in_processes(folder, tmp_path / "cache", 2)
    assert sum(r["unpacked"] for r in ranks) == 1, ranks  # one rank wrote the copy, the other waited for it
    for r in ranks:
        assert r["mapped"] and r["sha256"] == pixels, r
        # its pages are the page cache's, shared by the node's ranks; only a chunk of it was ever private
        assert r["peak_growth"] <= 1.2 * IMAGE_BYTES, r
        assert r["anon_growth"] <= 0.2 * IMAGE_BYTES, r
    # a later job maps the copy and decompresses nothing
    again = load_in_processes(folder, tmp_path / "cache", 2)
    assert [r["unpacked"] for r in again] == [0, 0] and all(r["sha256"] == pixels for r in again), again


def test_without_a_data_cache_each_rank_decompresses_its_own_copy(mnist_gz):
    folder, pixels = mnist_gz
    (alone,) = load_in_processes(folder, "off", 1)
    assert not alone["mapped"] and alone["unpacked"] == 0 and alone["sha256"] == pixels, alone


def test_a_stream_cut_short_is_one_error_and_leaves_no_entry_lock_or_temporary_folder(mnist_gz, tmp_path,
                                                                                        monkeypatch):
    folder, _ = mnist_gz
    cut = tmp_path / "cut"
    cut.mkdir()
    whole = gzip.decompress((folder / "train-images-idx3-ubyte.gz").read_bytes())
    (cut / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(whole[: len(whole) - 1000], compresslevel=1))
    (cut / "train-labels-idx1-ubyte.gz").write_bytes((folder / "train-labels-idx1-ubyte.gz").read_bytes())
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTBP_DATA_CACHE", str(cache))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: IDX dims \(24000, 28, 28\) need "
                                         rf"{16 + IMAGE_BYTES} bytes, the file has {16 + IMAGE_BYTES - 1000}"):
        load_dataset(str(cut))
    assert sorted(os.listdir(cache)) == []


def test_a_changed_file_is_unpacked_again(mnist_gz, tmp_path, monkeypatch):
    folder, _ = mnist_gz
    monkeypatch.setenv("DISTBP_DATA_CACHE", str(tmp_path / "cache"))
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (changed / name).write_bytes((folder / name).read_bytes())
    first = load_dataset(str(changed), test_fraction=0.0).train.X
    whole = bytearray(gzip.decompress((changed / "train-images-idx3-ubyte.gz").read_bytes()))
    whole[16] ^= 0xFF  # the first pixel
    (changed / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(whole), compresslevel=1))
    second = load_dataset(str(changed), test_fraction=0.0).train.X
    assert second[0, 0] == 255 - first[0, 0] and np.array_equal(second[1:], first[1:])
    assert len([e for e in os.listdir(tmp_path / "cache") if datacache.ENTRY_NAME.fullmatch(e)]) == 2
