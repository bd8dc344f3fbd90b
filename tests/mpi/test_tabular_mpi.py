"""Parquet and HDF5 data on several ranks (issue 33): distbp.fit on a Parquet or HDF5 file trains the parameters
the same data gives as an .npz, and the parameters one rank trains (float64, within 1e-12); with a data cache
the ranks of a node convert the file once and each maps that one copy.

    launch/local -n 3 --threads 1 python -m pytest -p no:cacheprovider --with-mpi -m mpi tests/mpi/test_tabular_mpi.py
"""

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import distbp
from distbp.comm.serial import SerialComm
from distbp.data import cache as datacache
from distbp.data import tabular
from distbp.data.datasets import load_dataset

pytestmark = pytest.mark.mpi

ROWS = 211  # uneven over 2 and 3 ranks
SPEC = {"epochs": 2, "batch_size": 13, "optimizer": "momentum", "lr": 0.005, "seed": 3, "timeout": 60,
        "verbose": False}


def mpi():
    from mpi4py import MPI
    return MPI.COMM_WORLD


@pytest.fixture(scope="module")
def files():
    """The same rows as an .npz, a Parquet file (with a column of notes that is no feature), an HDF5 file whose
    X is memory-mapped where it lies and one whose X is chunked and compressed; in a folder every rank sees."""
    folder = Path(mpi().bcast(tempfile.mkdtemp(prefix="distbp-tabular-") if mpi().rank == 0 else None))
    if mpi().rank == 0:
        rng = np.random.default_rng(7)
        y = rng.integers(0, 3, ROWS)
        X = (rng.standard_normal((3, 5))[y] * 2 + rng.standard_normal((ROWS, 5)) + 3).astype(np.float32)
        np.savez(folder / "same.npz", X=X, y=y)
        table = {f"x{j}": X[:, j] for j in range(5)} | {"note": ["n/a"] * ROWS, "label": y}
        pq.write_table(pa.table(table), folder / "d.parquet", row_group_size=50)
        with h5py.File(folder / "d.h5", "w") as f:
            f["X"], f["y"] = X, y
        with h5py.File(folder / "chunked.hdf5", "w") as f:
            f.create_dataset("X", data=X, chunks=(32, 5), compression="gzip")
            f["y"] = y
        pd.DataFrame(X, columns=[f"x{j}" for j in range(5)]).assign(label=y).to_parquet(folder / "pandas.parquet")
    mpi().Barrier()
    yield folder
    mpi().Barrier()
    if mpi().rank == 0:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["in memory", "data cache"])
def cache(request, files, monkeypatch):
    """No data cache (each rank reads the features), or one that keeps even these small files' features, shared
    by the ranks (one per test, so that each test converts anew)."""
    if request.param == "in memory":
        monkeypatch.setenv("DISTBP_DATA_CACHE", "off")
        return None
    folder = files / f"cache-{mpi().bcast(np.random.default_rng().integers(1 << 30) if mpi().rank == 0 else None)}"
    monkeypatch.setenv("DISTBP_DATA_CACHE", str(folder))
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    return folder


def trained(data: str, comm=None, **options) -> np.ndarray:
    model = distbp.MLP([5, 7, 3], activation="tanh", dtype="float64", seed=3)
    distbp.fit(model, data=data, comm=comm, **SPEC, **options)
    return model.flat_params


@pytest.mark.parametrize("name, options", [
    ("d.parquet", {"features": ["x0", "x1", "x2", "x3", "x4"]}),
    ("pandas.parquet", {}),
    ("d.h5", {}),
    ("chunked.hdf5", {}),
])
def test_p_ranks_train_the_parameters_of_the_same_npz_and_of_one_rank(files, cache, name, options):
    p_ranks = trained(str(files / name), **options)
    npz = trained(str(files / "same.npz"))
    one = trained(str(files / name), comm=SerialComm(), **options)
    assert np.abs(p_ranks - npz).max() <= 1e-12 and np.abs(p_ranks - one).max() <= 1e-12
    assert len({a.tobytes() for a in mpi().allgather(p_ranks)}) == 1  # the same parameters on every rank


@pytest.mark.parametrize("name", ["pandas.parquet", "chunked.hdf5"])
def test_the_ranks_convert_a_file_once_and_map_one_copy(files, name, monkeypatch):
    comm = mpi()
    folder = files / f"once-{name}"
    monkeypatch.setenv("DISTBP_DATA_CACHE", str(folder))
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    converted = []
    convert = tabular._convert
    monkeypatch.setattr(tabular, "_convert", lambda *a: converted.append(1) or convert(*a))
    data = load_dataset(str(files / name), test_fraction=0)
    assert comm.allreduce(len(converted)) == 1  # one rank wrote the copy; the others waited for it
    assert isinstance(data.train.X, np.memmap) and len(list(folder.glob("*-*"))) == 1
    with np.load(files / "same.npz") as same:
        assert np.array_equal(np.asarray(data.train.X), same["X"])
