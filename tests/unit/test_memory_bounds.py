"""Reading a dataset never takes much more memory than the arrays it makes, and a dataset that cannot fit
is refused from its headers (npz, IDX) or its first rows (CSV), with the file and the sizes named."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distbp.data import formats
from distbp.host import meminfo

ROWS, FEATURES = 60_000, 20


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """A regular CSV of 60,000 rows x 20 features + label (about 10 MB of float64 once read)."""
    path = tmp_path_factory.mktemp("csv") / "big.csv"
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.standard_normal((ROWS, FEATURES)).round(4), rng.integers(0, 3, ROWS)])
    with open(path, "w") as f:
        f.write(",".join([f"f{i}" for i in range(FEATURES)] + ["label"]) + "\n")
        np.savetxt(f, table, delimiter=",", fmt="%.4f")
    return path


def test_reading_a_csv_peaks_near_the_size_of_its_arrays(big_csv):
    # in a fresh interpreter, so that the peak (ru_maxrss) is this read's alone
    code = textwrap.dedent(f"""
        import json, resource
        from pathlib import Path
        from distbp.data import formats
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        data = formats.read_csv(Path({str(big_csv)!r}))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"growth": (after - before) * 1024, "bytes": data["X"].nbytes + data["y"].nbytes,
                          "shape": data["X"].shape}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["shape"] == [ROWS, FEATURES]
    # the table, its X copy and one block of Python floats (measured 2.1x); a list of Python floats
    # per cell, as the reader once built, is over 5x
    assert got["growth"] < 3 * got["bytes"], got


def test_a_csv_that_cannot_fit_is_refused_after_its_first_block(big_csv, monkeypatch):
    monkeypatch.setattr(meminfo, "available_memory", lambda: 4 << 20)  # 4 MiB free
    monkeypatch.setattr(formats, "CSV_CHUNK_ROWS", 1000)
    seen = []
    real_check = formats.check_fits_memory
    monkeypatch.setattr(formats, "check_fits_memory", lambda *a: seen.append(1) or real_check(*a))
    with pytest.raises(ValueError) as err:
        formats.read_csv(big_csv)
    assert len(seen) == 1  # the first block's projection already refused it
    message = str(err.value)
    assert message.startswith(f"{big_csv}: its about ") and "projected from the first 1,000" in message
    assert "more than the 4 MiB this machine has available" in message


def test_an_npz_that_cannot_fit_is_refused_from_its_headers(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=np.zeros((50_000, 40), np.float32), y=np.zeros(50_000, np.int64))
    monkeypatch.setattr(meminfo, "available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"d.npz: its arrays need 8 MiB, more than the 1 MiB"):
        formats.read_npz(path)
    monkeypatch.setattr(meminfo, "available_memory", lambda: 1 << 30)
    assert formats.read_npz(path)["X"].shape == (50_000, 40)


def test_every_rank_on_the_node_counts(tmp_path, monkeypatch):
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((1000, 1000), np.float64), y=np.zeros(1000, np.int64))  # 8 MB
    monkeypatch.setattr(meminfo, "available_memory", lambda: 20 << 20)
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    formats.read_npz(path)
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")  # four copies of 8 MB do not fit in 20 MiB
    with pytest.raises(ValueError, match="for each of the 4 ranks on this node"):
        formats.read_npz(path)
