"""Parquet and HDF5 data (issue 33): files written by pandas, pyarrow and h5py gather the bytes the same data
gives as an .npz, through the data cache (converted once per node, then memory-mapped) or without it (in
memory); their columns or datasets name the features, targets and weights; a file larger than the memory a run
may take privately trains within it; every bad file is one clear error naming it; and pyarrow and h5py are
optional extras, imported only when such a file is read.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs import load_npz, run_job

import distbp
from distbp.data import cache as datacache
from distbp.data import tabular
from distbp.data.datasets import load_dataset

ROWS = 150
NAMES = np.array(["cat", "dog", "eel"])


def features(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """(rows, 5) float32 features of different offsets and spreads."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 5)) * [1, 10, 100, 0.1, 3] + [2, -5, 50, 0, 1]).astype(np.float32)


def labels(rows: int = ROWS, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, rows)


def columns(X: np.ndarray) -> list[str]:
    return [f"x{j}" for j in range(X.shape[1])]


def frame(X: np.ndarray, **extra) -> pd.DataFrame:
    return pd.DataFrame(X, columns=columns(X)).assign(**extra)


def gathered(data, dtype=np.float32) -> list[bytes]:
    """Every row of each split as gather writes it (in reverse order), and the splits' scaling, as bytes."""
    out = []
    for split in (s for s in (data.train, data.test) if s is not None):
        rows = np.arange(split.n_rows, dtype=np.int64)[::-1].copy()
        X = np.empty((len(rows), data.n_features), dtype)
        y = np.empty(len(rows), np.int64) if split.y.ndim == 1 else np.empty((len(rows), data.n_targets), dtype)
        w = None if split.w is None else np.empty(len(rows), dtype)
        split.gather(rows, X, y, w)
        out += [X.tobytes(), y.tobytes(), split.offset.tobytes(), split.factor.tobytes(),
                b"" if w is None else w.tobytes()]
    return out


@pytest.fixture(params=["in memory", "data cache"])
def cache(request, tmp_path, monkeypatch):
    """Without a data cache (each rank reads the features into memory), or with one that keeps even a small
    file's features (converted once, then memory-mapped); the readers' blocks made tiny, so that a file is
    converted in many blocks and, for Parquet, in passes of two columns."""
    monkeypatch.setattr(tabular, "BLOCK_BYTES", 64)
    monkeypatch.setattr(tabular, "COLUMNS_AT_ONCE", 2)
    if request.param == "in memory":
        monkeypatch.setenv("DISTBP_DATA_CACHE", "off")
    else:
        monkeypatch.setenv("DISTBP_DATA_CACHE", str(tmp_path / "cache"))
        monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    return request.param


# ---------------------------------------------------------------- the same bytes as an .npz


def write_pandas(path, X, y):
    frame(X, label=y).to_parquet(path)


def write_pyarrow(path, X, y):
    table = pa.table({**{name: X[:, j] for j, name in enumerate(columns(X))}, "label": y})
    pq.write_table(table, path, row_group_size=40)  # uneven row groups: 40, 40, 40, 30


def write_h5(path, X, y, **options):
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X, **options)
        f.create_dataset("y", data=y)


WRITERS = {
    "pandas.parquet": write_pandas,
    "pyarrow.parquet": write_pyarrow,
    "contiguous.h5": write_h5,  # memory-mapped where it lies in the file
    "gzip.hdf5": lambda path, X, y: write_h5(path, X, y, chunks=(16, 5), compression="gzip"),
}


@pytest.mark.parametrize("scale", ["auto", "minmax"])
@pytest.mark.parametrize("name", WRITERS)
def test_parquet_and_hdf5_files_gather_the_bytes_of_the_same_npz(tmp_path, cache, name, scale):
    X, y = features(), labels()
    np.savez(tmp_path / "same.npz", X=X, y=y)
    WRITERS[name](tmp_path / name, X, y)
    want = load_dataset(str(tmp_path / "same.npz"), seed=4, scale=scale)
    got = load_dataset(str(tmp_path / name), seed=4, scale=scale)
    assert gathered(got) == gathered(want) and gathered(got, np.float64) == gathered(want, np.float64)
    assert got.fingerprint() == want.fingerprint() and got.train.X.dtype == np.float32
    mapped = cache == "data cache" or name == "contiguous.h5"
    assert isinstance(got.train.X, np.memmap) == mapped


def test_an_hdf5_files_test_datasets_are_the_held_out_split(tmp_path, cache):
    X, y, X_test, y_test = features(), labels(), features(40, seed=5), labels(40, seed=6)
    np.savez(tmp_path / "same.npz", X=X, y=y, X_test=X_test, y_test=y_test)
    with h5py.File(tmp_path / "split.h5", "w") as f:
        f["X"], f["y"] = X, y
        f.create_dataset("X_test", data=X_test, chunks=(8, 5), compression="lzf")
        f["y_test"] = y_test
    want, got = load_dataset(str(tmp_path / "same.npz")), load_dataset(str(tmp_path / "split.h5"))
    assert got.test.n_rows == 40 and gathered(got) == gathered(want)


def test_a_wide_parquet_file_of_mixed_column_types_takes_their_common_type(tmp_path, cache):
    X = features()
    table = {f"f{j}": X[:, j] for j in range(5)} | {"i": np.arange(ROWS, dtype=np.int16), "b": np.arange(ROWS) % 2 == 0}
    pq.write_table(pa.table(table | {"label": labels()}), tmp_path / "mixed.parquet")
    data = load_dataset(str(tmp_path / "mixed.parquet"), test_fraction=0)
    assert data.train.X.dtype == np.float32 and data.n_features == 7  # float32, int16 and bool: float32
    whole = np.column_stack([X, np.arange(ROWS), np.arange(ROWS) % 2 == 0]).astype(np.float32)
    assert np.array_equal(np.asarray(data.train.X), whole)


def test_a_pandas_index_stored_as_a_column_is_neither_a_feature_nor_the_target(tmp_path, cache):
    X, y = features(), labels()
    kept = np.flatnonzero(X[:, 0] > 2)  # a filtered frame: pandas stores its index as __index_level_0__, last
    frame(X, y=y).iloc[kept].to_parquet(tmp_path / "filtered.parquet")
    assert pq.ParquetFile(tmp_path / "filtered.parquet").schema_arrow.names[-1] == "__index_level_0__"
    np.savez(tmp_path / "same.npz", X=X[kept], y=y[kept])
    want = gathered(load_dataset(str(tmp_path / "same.npz")))
    assert gathered(load_dataset(str(tmp_path / "filtered.parquet"))) == want


def test_features_name_parquet_columns_and_hdf5_datasets_in_the_order_given(tmp_path, cache):
    X, y = features(), labels()
    frame(X, label=y).to_parquet(tmp_path / "d.parquet")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["pair"], f["one"], f["y"] = X[:, [3, 0]], X[:, 4], y
    np.savez(tmp_path / "same.npz", X=X[:, [3, 0, 4]], y=y)
    want = gathered(load_dataset(str(tmp_path / "same.npz")))
    assert gathered(load_dataset(str(tmp_path / "d.parquet"), features=["x3", "x0", "x4"])) == want
    assert gathered(load_dataset(str(tmp_path / "d.h5"), features=["pair", "one"])) == want


def test_a_second_load_maps_the_converted_copy_and_other_features_are_another_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTBP_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datacache, "MIN_BYTES", 0)
    converted = []
    convert = tabular._convert
    monkeypatch.setattr(tabular, "_convert", lambda *a: converted.append(1) or convert(*a))
    X, y = features(), labels()
    frame(X, label=y).to_parquet(tmp_path / "d.parquet")
    first, again = (load_dataset(str(tmp_path / "d.parquet"), test_fraction=0) for _ in range(2))
    assert len(converted) == 1 and isinstance(again.train.X, np.memmap) and gathered(first) == gathered(again)
    other = load_dataset(str(tmp_path / "d.parquet"), test_fraction=0, features=["x1", "x0"])
    assert len(converted) == 2 and np.array_equal(np.asarray(other.train.X), X[:, [1, 0]])


# ---------------------------------------------------------------- labels, targets and weights


def test_string_labels_of_a_parquet_column_are_classes(tmp_path, cache):
    X, y = features(), NAMES[labels()]
    frame(X, species=y).to_parquet(tmp_path / "named.parquet")
    np.savez(tmp_path / "same.npz", X=X, y=y)
    got = load_dataset(str(tmp_path / "named.parquet"), targets=["species"], kind="classes")
    want = load_dataset(str(tmp_path / "same.npz"), kind="classes")
    assert got.classes.tolist() == ["cat", "dog", "eel"] and gathered(got) == gathered(want)
    # a pandas category column is stored as a dictionary of its strings: the same labels
    frame(X, species=pd.Categorical(y)).to_parquet(tmp_path / "category.parquet")
    assert gathered(load_dataset(str(tmp_path / "category.parquet"), targets="species", kind="classes")) == \
        gathered(want)


def test_string_labels_of_an_hdf5_dataset_are_classes(tmp_path, cache):
    X, y = features(), NAMES[labels()]
    with h5py.File(tmp_path / "named.h5", "w") as f:
        f["X"] = X
        f.create_dataset("y", data=y.tolist(), dtype=h5py.string_dtype())
    got = load_dataset(str(tmp_path / "named.h5"), kind="classes")
    assert got.classes.tolist() == ["cat", "dog", "eel"]
    assert gathered(got) == gathered(load_dataset_npz(tmp_path, X=X, y=y, kind="classes"))


def load_dataset_npz(tmp_path, kind="auto", targets=None, scale_targets="none", **arrays):
    np.savez(tmp_path / "same.npz", **arrays)
    return load_dataset(str(tmp_path / "same.npz"), kind=kind, targets=targets, scale_targets=scale_targets)


def test_several_target_columns_are_regression_targets(tmp_path, cache):
    X = features()
    t = np.random.default_rng(3).standard_normal((ROWS, 2)) * [1.0, 200.0] + [0.0, 1000.0]
    frame(X, price=t[:, 0], area=t[:, 1]).to_parquet(tmp_path / "houses.parquet")
    with h5py.File(tmp_path / "houses.h5", "w") as f:
        f["X"], f["price"], f["area"] = X, t[:, 0], t[:, 1]
    options = {"targets": ["price", "area"], "kind": "values", "scale_targets": "standardize"}
    want = load_dataset_npz(tmp_path, X=X, price=t[:, 0], area=t[:, 1], **options)
    for name in ("houses.parquet", "houses.h5"):
        got = load_dataset(str(tmp_path / name), **options)
        assert got.kind == "values" and got.n_targets == 2 and gathered(got) == gathered(want)
        np.testing.assert_array_equal(got.target_offset, want.target_offset)


def test_zero_one_columns_are_a_multilabel_set_named_by_its_columns(tmp_path, cache):
    X, rng = features(), np.random.default_rng(8)
    tags = {"red": rng.random(ROWS) < 0.5, "round": rng.random(ROWS) < 0.3, "big": rng.random(ROWS) < 0.7}
    frame(X, **tags).to_parquet(tmp_path / "tags.parquet")  # booleans, as pandas keeps 0/1 answers
    got = load_dataset(str(tmp_path / "tags.parquet"), targets=list(tags), kind="multilabel")
    want = load_dataset_npz(tmp_path, X=X, **tags, targets=list(tags), kind="multilabel")
    assert got.multilabel and got.classes.tolist() == ["red", "round", "big"] and gathered(got) == gathered(want)


def test_a_weights_column_or_dataset_weighs_the_rows_and_is_no_feature(tmp_path, cache):
    X, y, w = features(), labels(), np.random.default_rng(2).random(ROWS) * 3
    frame(X, w=w, label=y).to_parquet(tmp_path / "weighted.parquet")
    with h5py.File(tmp_path / "weighted.h5", "w") as f:
        f["X"], f["y"], f["importance"] = X, y, w
    want = gathered(load_dataset_npz(tmp_path, X=X, y=y, w=w))
    assert gathered(load_dataset(str(tmp_path / "weighted.parquet"), weights="w")) == want
    assert gathered(load_dataset(str(tmp_path / "weighted.h5"), weights="importance")) == want


# ---------------------------------------------------------------- bad input: one error naming the file


@pytest.fixture
def good(tmp_path):
    """A good Parquet and a good HDF5 file, to break."""
    X, y = features(), labels()
    frame(X, label=y).to_parquet(tmp_path / "good.parquet")
    write_h5(tmp_path / "good.h5", X, y)
    return tmp_path / "good.parquet", tmp_path / "good.h5"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("suffix, what", [(".parquet", "a Parquet file"), (".h5", "an HDF5 file")])
def test_a_corrupt_file_is_one_error_naming_it(tmp_path, good, damage, suffix, what):
    whole = (good[0] if suffix == ".parquet" else good[1]).read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(np.random.default_rng(0).bytes(5000) if damage == "garbage" else whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: cannot read it as {what}: "):
        load_dataset(str(bad))


def test_a_parquet_file_whose_compressed_pages_are_damaged_is_one_error_naming_it(tmp_path, cache):
    frame(features(3000), label=labels(3000)).to_parquet(tmp_path / "z.parquet", compression="gzip")
    damaged = bytearray((tmp_path / "z.parquet").read_bytes())
    damaged[2000:2400] = bytes(b ^ 0x5A for b in damaged[2000:2400])  # inside the first column's pages
    (tmp_path / "damaged.parquet").write_bytes(damaged)
    with pytest.raises(ValueError, match=r"damaged.parquet: cannot read it as a Parquet file: .*GZip"):
        load_dataset(str(tmp_path / "damaged.parquet"))


def test_a_missing_column_or_dataset_is_one_error_listing_those_there(good):
    parquet, hdf5 = good
    with pytest.raises(ValueError, match=rf"{re.escape(str(parquet))}: no column 'price' \(named by --targets\); "
                                         r"its columns are x0, x1, x2, x3, x4, label$"):
        load_dataset(str(parquet), targets=["price"])
    with pytest.raises(ValueError, match=r"no column 'x7' \(named by --features\)"):
        load_dataset(str(parquet), features=["x0", "x7"])
    with pytest.raises(ValueError, match=r"no column 'wt' \(named by --weights\)"):
        load_dataset(str(parquet), weights="wt")
    with pytest.raises(ValueError, match=rf"{re.escape(str(hdf5))}: no dataset 'images' \(not there; named by "
                                         r"--features or its default\); its datasets are X, y$"):
        load_dataset(str(hdf5), features=["images"])
    with h5py.File(hdf5, "a") as f:
        f.create_group("group")
    with pytest.raises(ValueError, match=r"no dataset 'group' \(a group, not a dataset; named by --targets"):
        load_dataset(str(hdf5), targets=["group"])


def test_a_feature_column_of_no_numbers_is_named(tmp_path):
    frame(features(), city=["Oslo"] * ROWS, label=labels()).to_parquet(tmp_path / "words.parquet")
    with pytest.raises(ValueError, match=r"words.parquet: column 'city' holds (large_)?string, not numbers; features "
                                         r"are numbers .*name the feature columns with --features"):
        load_dataset(str(tmp_path / "words.parquet"))
    with h5py.File(tmp_path / "words.h5", "w") as f:
        f.create_dataset("X", data=[["a", "b"]] * ROWS, dtype=h5py.string_dtype())
        f["y"] = labels()
    with pytest.raises(ValueError, match=r"words.h5: dataset 'X' holds object, not numbers; features are numbers$"):
        load_dataset(str(tmp_path / "words.h5"))


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((ROWS, 2, 3)), "y": labels()},
     r"dataset 'X' has shape \(150, 2, 3\); features are \(rows,\) or \(rows, k\); flatten images"),
    ({"X": features(), "y": np.zeros((ROWS, 2, 2))}, r"dataset 'y' has shape \(150, 2, 2\); targets are"),
    ({"X": features(), "y": labels(), "w": np.ones((ROWS, 2))},
     r"dataset 'w' has shape \(150, 2\); weights are \(rows,\)$"),
    ({"X": features(), "y": labels(ROWS - 1)}, r"dataset 'y' has 149 rows, 'X' has 150; features, targets and "),
    ({"X": features(), "y": labels(), "X_test": features(9)}, r"has X_test but no y_test: a test split needs both"),
], ids=["3-D features", "3-D targets", "2-D weights", "rows differ", "X_test without y_test"])
def test_hdf5_datasets_of_the_wrong_shape_are_one_error_naming_them(tmp_path, arrays, message):
    with h5py.File(tmp_path / "shapes.h5", "w") as f:
        for key, a in arrays.items():
            f[key] = a
    with pytest.raises(ValueError, match=r"shapes.h5(: |, dataset)") as error:
        load_dataset(str(tmp_path / "shapes.h5"), weights="w" if "w" in arrays else None)
    assert re.search(message, str(error.value)), error.value


def test_nan_in_the_features_is_todays_error_and_a_null_in_integers_or_labels_names_its_row(tmp_path):
    X = features()
    X[[3, 7], 1] = np.nan
    frame(X, label=labels()).to_parquet(tmp_path / "nan.parquet")  # pandas writes NaN as null
    with pytest.raises(ValueError, match=r"X \(.*nan.parquet\) has 2 NaN or Inf values; the first is in row 3$"):
        load_dataset(str(tmp_path / "nan.parquet"), test_fraction=0)
    write_h5(tmp_path / "nan.h5", X, labels())
    with pytest.raises(ValueError, match=r"X \(.*nan.h5, dataset X\) has 2 NaN or Inf values; the first is in row 3"):
        load_dataset(str(tmp_path / "nan.h5"), test_fraction=0)
    counts = pa.array([1, 2, None, *range(ROWS - 3)], pa.int64())
    pq.write_table(pa.table({"n": counts, "label": labels()}), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=r"null.parquet: column 'n' has a missing value \(null\) in row 2, and the "
                                         r"features are integers"):
        load_dataset(str(tmp_path / "null.parquet"))
    pq.write_table(pa.table({"x": X[:, 0], "label": pa.array([None, *NAMES[labels(ROWS - 1)]])}),
                   tmp_path / "nolabel.parquet")
    with pytest.raises(ValueError, match=r"nolabel.parquet: column 'label' has a missing value \(null\) in row 0$"):
        load_dataset(str(tmp_path / "nolabel.parquet"), kind="classes")


def test_features_and_targets_must_be_different_columns_and_files_must_name_columns(good, tmp_path):
    parquet, hdf5 = good
    with pytest.raises(ValueError, match=r"good.parquet: column 'label' is named as a feature and as a target"):
        load_dataset(str(parquet), features=["x0", "label"])
    with pytest.raises(ValueError, match=r"good.h5: dataset 'X' is named as a feature and as the weights"):
        load_dataset(str(hdf5), weights="X")
    np.savez(tmp_path / "d.npz", X=features(), y=labels())
    with pytest.raises(ValueError, match=r"--features names the columns of a Parquet file or the datasets of an HDF5 "
                                         r"file, and .*d.npz is neither .*its features are the array X"):
        load_dataset(str(tmp_path / "d.npz"), features=["x0"])
    with pytest.raises(ValueError, match=r"--weights names a column of a CSV or Parquet file or an HDF5 dataset"):
        load_dataset(str(tmp_path / "d.npz"), weights="w")


@pytest.mark.parametrize("module, suffix, extra", [("pyarrow.parquet", ".parquet", "parquet"),
                                                   ("h5py", ".hdf5", "hdf5")])
def test_a_missing_extra_is_one_error_naming_its_pip_install_line(tmp_path, monkeypatch, module, suffix, extra):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, module, None)  # `import` of it now fails, as where it is not installed
    with pytest.raises(ValueError, match=rf'data{suffix}: reading an? (Parquet|HDF5) file needs '
                                         rf'{module.split(".")[0]}, which is not installed: '
                                         rf'pip install "distbp\[{extra}\]"$'):
        load_dataset(str(path))


def test_starting_distbp_imports_neither_pyarrow_nor_h5py():
    code = ("import sys, distbp, distbp.cli, distbp.data.datasets\n"
            "print(sorted(m for m in ('pyarrow', 'h5py') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


# ---------------------------------------------------------------- larger than the memory a run may take


BIG_ROWS, BIG_FEATURES = 750_000, 100  # 300 MB of float32 features, more than the run's private memory limit
FEATURE_BYTES = BIG_ROWS * BIG_FEATURES * 4
# `distbp train` under an RLIMIT_DATA of argv[1] bytes (0: none), set before anything is imported; then the run's
# VmHWM and VmData at its end (VmHWM counts the pages of the mapped copy the run has touched)
MEASURE = ("import resource, sys\n"
           "if int(sys.argv[1]):\n"
           "    resource.setrlimit(resource.RLIMIT_DATA, (int(sys.argv[1]),) * 2)\n"
           "del sys.argv[1]\n"
           "from distbp.cli import main\n"
           "sys.argv = ['distbp', *sys.argv[1:]]\n"
           "code = main()\n"
           "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
           "print('VmHWM', int(status['VmHWM'].split()[0]) * 1024, 'VmData', int(status['VmData'].split()[0]) * 1024)\n"
           "sys.exit(code)\n")


def write_wide_parquet(path, rows: int) -> None:
    """rows x 100 float32 columns and 4 classes, as pyarrow writes them by default: one row group of every
    row, each column dictionary-encoded (until its dictionary is full) and snappy-compressed."""
    rng = np.random.default_rng(0)
    table = {f"x{j}": rng.standard_normal(rows, dtype=np.float32) for j in range(BIG_FEATURES)}
    pq.write_table(pa.table(table | {"label": rng.integers(0, 4, rows)}), path)


def train_measured(data, cache, data_limit: int | None = None) -> dict:
    """`distbp train` on one rank, one thread, 1 epoch, under an RLIMIT_DATA of data_limit bytes (private
    memory: the heap and anonymous maps; a memory-mapped file does not count) when given; its exit code and
    output, its VmHWM and VmData, and the peaks of its private resident memory (RssAnon) and of VmData,
    sampled every 2 ms from outside."""
    argv = ["train", "--data", str(data), "--layers", f"{BIG_FEATURES},8,4", "--batch-size", "512", "--epochs", "1",
            "--progress", "none", "--threads", "1"]
    child = subprocess.Popen([sys.executable, "-c", MEASURE, str(data_limit or 0), *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, DISTBP_THREADS="1", DISTBP_DATA_CACHE=str(cache)))
    peaks = {"RssAnon": 0, "VmData": 0}
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as status_file:
                status = dict(line.split(":", 1) for line in status_file)
            peaks = {key: max(peak, int(status[key].split()[0]) * 1024) for key, peak in peaks.items()}
        except (OSError, KeyError, ValueError):
            pass  # exiting
        time.sleep(0.002)
    out, err = child.communicate(timeout=120)
    found = re.search(r"VmHWM (\d+) VmData (\d+)", out)
    return {"code": child.returncode, "output": out + err, "peak_anon": peaks["RssAnon"],
            "peak_data": max(peaks["VmData"], int(found[2]) if found else 0), "hwm": int(found[1]) if found else 0}


@pytest.mark.timeout(240)
def test_a_file_larger_than_the_runs_memory_limit_trains_within_it(tmp_path):
    tiny, big, cache = tmp_path / "tiny.parquet", tmp_path / "big.parquet", tmp_path / "cache"
    write_wide_parquet(tiny, 2000)
    write_wide_parquet(big, BIG_ROWS)
    cache.mkdir(mode=0o700)
    try:
        measure_against_the_limit(tiny, big, cache)
    finally:  # pytest keeps the last runs' folders: not these 600 MB
        shutil.rmtree(cache, ignore_errors=True)
        big.unlink()


def measure_against_the_limit(tiny, big, cache) -> None:
    base = train_measured(tiny, cache)
    assert base["code"] == 0, base["output"]
    # private memory a run may take beyond what the tiny file's run took: half the features' bytes
    limit = base["peak_data"] + FEATURE_BYTES // 2
    # the same file read into memory (no data cache) does not fit under the limit: the limit is real
    refused = train_measured(big, "off", limit)
    assert refused["code"] == 2 and "not enough memory to read its features (286 MiB)" in refused["output"], refused
    run = train_measured(big, cache, limit)  # converts the file into the cache, maps it, trains
    assert run["code"] == 0 and "675000 train, 75000 test rows" in run["output"], run["output"]
    # private resident memory: a few batches, the statistics' chunks, pyarrow's pages of 16 columns
    assert run["peak_anon"] - base["peak_anon"] < FEATURE_BYTES // 2, (run, base)
    # all resident memory: the mapped copy's pages (the page cache's, shared by a node's ranks) at most once
    assert run["hwm"] - base["hwm"] < FEATURE_BYTES * 3 // 2, (run, base)


# ---------------------------------------------------------------- end to end, on 2 ranks


@pytest.mark.timeout(300)
def test_two_ranks_train_on_a_parquet_file_as_on_the_same_npz(tmp_path):
    X, rng = features(400), np.random.default_rng(5)
    y, w = NAMES[rng.integers(0, 3, 400)], rng.random(400) + 0.5
    frame(X, weight=w, species=y, note=["n/a"] * 400).to_parquet(tmp_path / "some.parquet")
    np.savez(tmp_path / "same.npz", X=X[:, [0, 2, 4]], y=y, w=w)
    common = ["--layers", "3,6,3", "--activation", "tanh", "--epochs", "3", "--batch-size", "32", "--lr", "0.01",
              "--loss", "cross_entropy", "--progress", "none", "--seed", "2"]
    parquet = run_job(2, ["distbp", "train", "--data", "some.parquet", "--features", "x0,x2,x4", "--targets",
                          "species", "--weights", "weight", *common, "--save", "m.npz"], cwd=tmp_path, timeout=150)
    assert parquet.returncode == 0, parquet.output
    npz = run_job(2, ["distbp", "train", "--data", "same.npz", *common, "--save", "same.npz.model.npz"], cwd=tmp_path,
                  timeout=150)
    assert npz.returncode == 0, npz.output
    saved, same = load_npz(tmp_path / "m.npz"), load_npz(tmp_path / "same.npz.model.npz")
    assert saved.keys() == same.keys() and all(saved[k].tobytes() == same[k].tobytes() for k in saved)
    assert distbp.load(str(tmp_path / "m.npz")).classes.tolist() == ["cat", "dog", "eel"]


def test_distbp_predict_reads_the_feature_columns_and_datasets(tmp_path):
    """predict's rows: a Parquet file's named columns (all but a pandas index by default), an HDF5 file's X or
    named datasets side by side; a missing one is named."""
    from distbp.predict import read_features

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [4, 5, 6], "c": [0.5, 0.25, 0.125]})
    frame.to_parquet(tmp_path / "rows.parquet")
    np.testing.assert_array_equal(read_features(str(tmp_path / "rows.parquet"), ["c", "a"]), frame[["c", "a"]])
    np.testing.assert_array_equal(read_features(str(tmp_path / "rows.parquet")), frame.to_numpy())
    with h5py.File(tmp_path / "rows.h5", "w") as f:
        f["X"], f["extra"] = frame[["a", "b"]].to_numpy(), frame["c"].to_numpy()
    np.testing.assert_array_equal(read_features(str(tmp_path / "rows.h5")), frame[["a", "b"]])
    np.testing.assert_array_equal(read_features(str(tmp_path / "rows.h5"), ["X", "extra"]), frame.to_numpy())
    with pytest.raises(ValueError, match="nothere"):
        read_features(str(tmp_path / "rows.parquet"), ["nothere"])
    with pytest.raises(ValueError, match="--features names a Parquet"):
        np.save(tmp_path / "rows.npy", frame.to_numpy())
        read_features(str(tmp_path / "rows.npy"), ["a"])
