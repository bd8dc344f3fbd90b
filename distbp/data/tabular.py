"""Parquet and HDF5 files (see docs/data.md): the feature columns or datasets as one (rows, features) array,
the targets and weights beside them, never the whole file in memory.

A Parquet file stores its rows in row groups compressed column by column: no row's bytes can be read without
decompressing its row group's pages of every column. So a node's first rank converts the features once into the
data cache (`distbp.data.cache`) as X.npy, streaming (`ParquetFile.iter_batches`: COLUMNS_AT_ONCE columns and
about BLOCK_BYTES of rows at a time; for HDF5, hyperslabs of rows), while the node's other ranks wait for it;
every rank then memory-maps that one copy and reads only the rows it gathers, and the scaling statistics are
computed over it in chunks (`datasets.scaling_part`). An HDF5 dataset that is stored contiguous and
uncompressed needs no copy: it is memory-mapped where it lies in the file. Targets and weights (a column or
two) are read into memory. Without a usable data cache (off, unsafe, no room) each rank reads the features into
memory, after the node-wide memory check (`formats.check_fits_memory`), as the gzipped IDX reader does.

pyarrow and h5py are optional extras (`pip install "distbp[parquet]"`, `"distbp[hdf5]"`), imported here only
when such a file is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distbp.data import cache as datacache
from distbp.data import formats

PARQUET = (".parquet",)
HDF5 = (".h5", ".hdf5")
BLOCK_BYTES = 8 << 20  # features converted at a time: about 8 MiB
READ_BUFFER = 1 << 20  # bytes pyarrow reads of a column chunk at a time (a row group is never held whole)
# Parquet columns decoded at a time: pyarrow holds a page of each column it reads (1 MiB by default) and its
# dictionary page (up to 1 MiB more): 100 columns read together took 320 MB, 16 took 55 MB; so a wider file
# is converted in several passes over its rows, each writing its columns into every row of the copy
COLUMNS_AT_ONCE = 16
SHOWN = 20  # columns or datasets an error lists at most


@dataclass
class Features:
    """Features to be made into one (rows, n_features) array of `dtype`: `blocks()` yields (first row, first
    column, block) for blocks of about BLOCK_BYTES that together cover the array once."""

    shape: tuple[int, int]
    dtype: np.dtype
    blocks: Callable[[], Iterator[tuple[int, int, np.ndarray]]]


# ---------------------------------------------------------------- Parquet


def read_parquet(path: Path, features: list[str] | None = None, targets: list[str] | None = None,
                 weights: str | None = None) -> tuple[dict, dict, list[str]]:
    """({"X", "y", ("w")}, what each came from, the target columns' names) of a Parquet file.

    X (rows, features): the columns named by `features` (default: every column but the targets, the weights and
    a pandas index), of numbers (booleans count as 0/1), side by side in their common numpy type; a memmap of the
    data cache's copy, or in memory. y: the columns named by `targets` (default: 'label' if present, else the
    last but a pandas index), one as it is (strings stay strings: class labels), several side by side
    (`formats.stack_targets`). w (rows,): the column named `weights`."""
    pq = _extra("pyarrow.parquet", "parquet", path, "a Parquet file")
    import pyarrow as pa

    with _errors(path, "a Parquet file"):
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
    with contextlib.closing(file):
        features, targets = _parquet_names(path, file.schema_arrow, features, targets, weights)
        dtype = np.result_type(*(_parquet_number(path, name, file.schema_arrow.field(name).type)
                                 for name in features))
        part = Features((file.metadata.num_rows, len(features)), dtype,
                        lambda: _parquet_blocks(file, path, features, dtype))
        X = _features(path, "parquet", {"features": features}, {"X": part})["X"]
        with _errors(path, "a Parquet file"):
            table = file.read(columns=[*targets, *([weights] if weights else [])], use_threads=False)
    pa.default_memory_pool().release_unused()  # mimalloc keeps what the pages took unless asked to give it back
    arrays = {"X": X, "y": _stacked(path, {name: _parquet_column(path, table, name) for name in targets}, targets)}
    files = {"X": str(path), "y": _where(path, "column", targets)}
    if weights is not None:
        arrays["w"], files["w"] = _parquet_column(path, table, weights), _where(path, "column", [weights])
    return arrays, files, targets


def _parquet_names(path: Path, schema, features: list[str] | None, targets: list[str] | None,
                   weights: str | None) -> tuple[list[str], list[str]]:
    """The feature and target columns, checked: named ones present and distinct, the defaults filled in."""
    names = schema.names
    # a pandas index that is no range is stored as a column (__index_level_0__): neither a feature nor a target
    index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
    data_columns = [name for name in names if name not in index] or names
    targets = list(targets) if targets else ["label" if "label" in names else data_columns[-1]]
    _check_named(path, "column", names, targets, "--targets")
    if weights is not None:
        _check_named(path, "column", names, [weights], "--weights")
        if weights in targets:
            raise ValueError(f"{path}: column {weights!r} holds the targets; the weights need a column of their own")
    features = list(features) if features else [n for n in data_columns if n not in targets and n != weights]
    _check_features_named(path, "column", names, features, targets, weights)
    return features, targets


def _parquet_number(path: Path, name: str, kind) -> np.dtype:
    """The numpy type of a feature column of arrow type `kind`; a column that holds no numbers is an error."""
    import pyarrow as pa

    if pa.types.is_boolean(kind):
        return np.dtype(np.int8)  # 0/1
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return np.dtype(kind.to_pandas_dtype())
    raise ValueError(f"{path}: column {name!r} holds {kind}, not numbers; features are numbers (integers, floats, "
                     f"booleans): name the feature columns with --features, the labels with --targets")


def _parquet_blocks(file, path: Path, columns: list[str], dtype: np.dtype) -> Iterator[tuple[int, int, np.ndarray]]:
    """The feature columns, COLUMNS_AT_ONCE at a time, as (first row, first column, block of dtype); a null
    (a missing value) is NaN in float features (the NaN check names it), and an error in integer ones."""
    with _errors(path, "a Parquet file"):
        for first in range(0, len(columns), COLUMNS_AT_ONCE):
            group, start = columns[first:first + COLUMNS_AT_ONCE], 0
            rows = max(1, BLOCK_BYTES // (len(group) * dtype.itemsize))
            for batch in file.iter_batches(batch_size=rows, columns=group, use_threads=False):
                block = np.empty((batch.num_rows, len(group)), dtype)
                for j, name in enumerate(group):
                    values = batch.column(name)
                    if values.null_count and dtype.kind != "f":
                        row = start + int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                        raise ValueError(f"{path}: column {name!r} has a missing value (null) in row {row}, and the "
                                         f"features are integers ({dtype}), which have no NaN to stand for it")
                    block[:, j] = values.to_numpy(zero_copy_only=False)
                yield start, first, block
                start += len(block)


def _parquet_column(path: Path, table, name: str) -> np.ndarray:
    """One target or weight column in memory: numbers, booleans, or strings (a dictionary's values)."""
    import pyarrow as pa

    column = table.column(name)
    if pa.types.is_dictionary(column.type):  # pandas' categories
        column = column.cast(column.type.value_type)
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: column {name!r} has a missing value (null) in row {row}")
    kind = column.type
    string_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow 16 on
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or string_view(kind):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=str)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise ValueError(f"{path}: column {name!r} holds {kind}; labels and targets are numbers or strings, "
                         "weights are numbers")
    return column.to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------- HDF5


def read_hdf5(path: Path, features: list[str] | None = None, targets: list[str] | None = None,
              weights: str | None = None) -> tuple[dict, dict, list[str]]:
    """({"X", "y", ("w"), ("X_test", "y_test", "w_test")}, what each came from, the targets' names) of an HDF5
    file.

    X (rows, features): the datasets named by `features` (default: "X"), each (rows,) or (rows, k), side by side
    in their common numpy type: memory-mapped where it lies in the file when it is one contiguous, uncompressed
    2-D dataset of numbers, else a memmap of the data cache's copy, or in memory. y: the datasets named by
    `targets` (default: "y"), one as it is (strings stay strings), several side by side. w (rows,): the dataset
    named `weights`. When every feature dataset NAME has a NAME_test beside it, those are the held-out split
    (with each target's NAME_test, and the weights' if there)."""
    h5py = _extra("h5py", "hdf5", path, "an HDF5 file")
    features, targets = list(features or ["X"]), list(targets or ["y"])
    _check_features_named(path, "dataset", None, features, targets, weights)
    if weights is not None and weights in targets:
        raise ValueError(f"{path}: dataset {weights!r} holds the targets; the weights need a dataset of their own")
    arrays, files, parts = {}, {}, {}
    with _errors(path, "an HDF5 file"), h5py.File(path, "r") as file:
        for suffix in _hdf5_splits(file, path, features, targets):
            x_sets = [_dataset(file, path, name + suffix, "--features") for name in features]
            y_sets = [_dataset(file, path, name + suffix, "--targets") for name in targets]
            w_name = None if weights is None else weights + suffix
            w_sets = [] if w_name is None or (suffix and w_name not in file) else [
                _dataset(file, path, w_name, "--weights")]
            _check_shapes(path, x_sets, y_sets, w_sets)
            mapped = _mapped(path, x_sets)
            if mapped is not None:
                arrays["X" + suffix] = mapped
            else:
                parts["X" + suffix] = _hdf5_features(path, x_sets)
            y_names = [name + suffix for name in targets]
            arrays["y" + suffix] = _stacked(path, {n: _hdf5_read(ds) for n, ds in zip(y_names, y_sets)}, y_names)
            files["X" + suffix] = _where(path, "dataset", [name + suffix for name in features])
            files["y" + suffix] = _where(path, "dataset", y_names)
            if w_sets:
                arrays["w" + suffix], files["w" + suffix] = _hdf5_read(w_sets[0]), _where(path, "dataset", [w_name])
        if parts:  # read while the file is open
            arrays |= _features(path, "hdf", {"features": features, "parts": sorted(parts)}, parts)
    return arrays, files, targets


def _hdf5_splits(file, path: Path, features: list[str], targets: list[str]) -> list[str]:
    """[""], or ["", "_test"] when every feature dataset has its NAME_test (and then every target must)."""
    tests = [f"{name}_test" in file for name in features]
    if any(tests) and not all(tests):
        raise ValueError(f"{path}: {', '.join(n + '_test' for n, t in zip(features, tests) if t)} but no "
                         f"{', '.join(n + '_test' for n, t in zip(features, tests) if not t)}: a test split needs "
                         "every feature dataset's NAME_test")
    missing = [name for name in targets if f"{name}_test" not in file]
    if all(tests) and missing:
        raise ValueError(f"{path}: has {features[0]}_test but no {missing[0]}_test: a test split needs both")
    present = [name for name in targets if name not in missing]
    if not all(tests) and present:
        raise ValueError(f"{path}: has {present[0]}_test but no {features[0]}_test: a test split needs both")
    return ["", "_test"] if all(tests) else [""]


def _dataset(file, path: Path, name: str, flag: str):
    """The dataset `name` of an open HDF5 file; its absence is one error listing the file's datasets."""
    import h5py

    found = file.get(name)
    if isinstance(found, h5py.Dataset):
        return found
    what = "a group, not a dataset" if found is not None else "not there"
    listed = []
    file.visititems(lambda key, item: listed.append(key) if isinstance(item, h5py.Dataset) else None)
    shown = ", ".join(listed[:SHOWN]) + (", …" if len(listed) > SHOWN else "")
    raise ValueError(f"{path}: no dataset {name!r} ({what}; named by {flag} or its default); its datasets are "
                     f"{shown or 'none'}")


def _check_shapes(path: Path, x_sets: list, y_sets: list, w_sets: list) -> None:
    """Features and targets (rows,) or (rows, k) of numbers (targets may hold strings), weights (rows,), and
    the same rows in each; checked before anything is read."""
    import h5py

    for ds, what, ranks in [*((ds, "features", (1, 2)) for ds in x_sets), *((ds, "targets", (1, 2)) for ds in y_sets),
                            *((ds, "weights", (1,)) for ds in w_sets)]:
        if ds.ndim not in ranks:
            hint = "; flatten images (rows, h, w) to (rows, h·w)" if what == "features" and ds.ndim > 2 else ""
            raise ValueError(f"{path}: dataset {ds.name.lstrip('/')!r} has shape {ds.shape}; {what} are "
                             f"{' or '.join(('(rows,)', '(rows, k)')[:len(ranks)])}{hint}")
        numbers = ds.dtype.kind in "biuf"
        if not numbers and not (what == "targets" and h5py.check_string_dtype(ds.dtype) is not None):
            raise ValueError(f"{path}: dataset {ds.name.lstrip('/')!r} holds {ds.dtype}, not numbers; {what} are "
                             f"numbers{' or strings' if what == 'targets' else ''}")
    first = x_sets[0]
    for ds in (*x_sets, *y_sets, *w_sets):
        if ds.shape[0] != first.shape[0]:
            raise ValueError(f"{path}: dataset {ds.name.lstrip('/')!r} has {ds.shape[0]} rows, "
                             f"{first.name.lstrip('/')!r} has {first.shape[0]}; features, targets and weights need "
                             "one row per example")


def _mapped(path: Path, x_sets: list) -> np.ndarray | None:
    """One 2-D dataset of numbers stored contiguous and uncompressed in the file, memory-mapped where it lies;
    None for anything else (it is converted)."""
    if len(x_sets) != 1:
        return None
    ds = x_sets[0]
    offset = ds.id.get_offset()
    if (ds.ndim != 2 or ds.chunks is not None or ds.compression is not None or ds.external or offset is None
            or ds.dtype.kind not in "iuf" or not ds.dtype.isnative or 0 in ds.shape):
        return None
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


def _hdf5_features(path: Path, x_sets: list) -> Features:
    """The feature datasets side by side, a hyperslab of rows of each at a time."""
    widths = [1 if ds.ndim == 1 else ds.shape[1] for ds in x_sets]
    dtype = np.result_type(*(np.int8 if ds.dtype.kind == "b" else ds.dtype.newbyteorder("=") for ds in x_sets))
    rows = x_sets[0].shape[0]

    def blocks() -> Iterator[tuple[int, int, np.ndarray]]:
        n = max(1, BLOCK_BYTES // (sum(widths) * dtype.itemsize))
        chunk = x_sets[0].chunks[0] if x_sets[0].chunks else 1
        n = max(chunk, n // chunk * chunk)  # whole chunks: each is decompressed once
        with _errors(path, "an HDF5 file"):
            for start in range(0, rows, n):
                stop = min(rows, start + n)
                block, column = np.empty((stop - start, sum(widths)), dtype), 0
                for ds, width in zip(x_sets, widths):
                    block[:, column:column + width] = ds[start:stop].reshape(stop - start, width)
                    column += width
                yield start, 0, block

    return Features((rows, sum(widths)), dtype, blocks)


def _hdf5_read(ds) -> np.ndarray:
    """A target or weight dataset in memory; strings as str."""
    import h5py

    if h5py.check_string_dtype(ds.dtype) is not None:
        return np.asarray(ds.asstr()[()], dtype=str)
    return ds[()]


# ---------------------------------------------------------------- the features, once per node


def _features(path: Path, fmt: str, selection: dict, parts: dict[str, Features]) -> dict[str, np.ndarray]:
    """{key: (rows, features) array} of `parts`: memory-mapped from the data cache, which the first process of
    this machine to ask fills (`datacache.shared`), or read into memory where the cache cannot be used."""
    nbytes = sum(math.prod(p.shape) * p.dtype.itemsize for p in parts.values())
    described = selection | {key: [list(p.shape), p.dtype.str] for key, p in parts.items()}
    entry = _cache_entry(fmt, path, nbytes, described) if nbytes else None
    if entry is not None:
        arrays = datacache.shared(entry, lambda folder: _convert(path, parts, folder))
        if arrays is not None:
            return arrays
    formats.check_fits_memory(path, nbytes, "its features")
    try:
        out = {key: np.empty(part.shape, part.dtype) for key, part in parts.items()}
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to read its features ({nbytes / 2**20:,.0f} MiB) into memory, "
                         f"as each rank does without a usable data cache ({datacache.ENV} off, unsafe or without "
                         "room); with one, a node converts them once and every rank maps that copy") from None
    for key, part in parts.items():
        _fill(path, part, out[key])
    return out


def _cache_entry(fmt: str, path: Path, nbytes: int, selection: dict) -> Path | None:
    """The data cache's entry for these features of this file (`datacache.file_entry` keys the file's identity;
    the selection, and this module's source, make the key of what is converted of it), or None."""
    entry = datacache.file_entry(fmt, path, nbytes)
    if entry is None:
        return None
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps([entry.name, selection, source], sort_keys=True).encode()).hexdigest()[:16]
    return entry.with_name(f"{fmt}-{key}")


def _convert(path: Path, parts: dict[str, Features], folder: Path) -> dict:
    """Write each part into folder/KEY.npy, a block at a time through a writable map (a block of columns lands
    in every row; the pages are the page cache's, never a copy in this process); return their meta.json record
    for the data cache, the digests read back from the files a block at a time."""
    meta = {"shapes": {}, "dtypes": {}, "sha256": {}}
    for key, part in parts.items():
        file = folder / f"{key}.npy"
        with open(file, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(part.dtype),
                                                       "fortran_order": False, "shape": part.shape})
            offset = out.tell()
            # the disk space now: a full disk is an OSError here (the cache is then left alone), not a SIGBUS
            # when a page of the map is written
            os.posix_fallocate(out.fileno(), offset, math.prod(part.shape) * part.dtype.itemsize)
        X = np.memmap(file, dtype=part.dtype, mode="r+", offset=offset, shape=part.shape)
        _fill(path, part, X)
        X.flush()
        del X
        digest = hashlib.sha256()
        with open(file, "rb") as written:
            written.seek(offset)
            while chunk := written.read(BLOCK_BYTES):
                digest.update(chunk)
        meta["shapes"][key], meta["dtypes"][key] = list(part.shape), part.dtype.str
        meta["sha256"][key] = digest.hexdigest()
    return meta


def _fill(path: Path, part: Features, X: np.ndarray) -> None:
    """Write a part's blocks into X; a file whose data holds other rows than its metadata says is an error
    (never a short or overlong array)."""
    rows, written = part.shape[0], 0
    for start, column, block in part.blocks():
        if start + len(block) > rows:
            raise ValueError(f"{path}: its metadata says {rows} rows, its data holds more")
        X[start:start + len(block), column:column + block.shape[1]] = block
        written += block.size
    if written != X.size:
        raise ValueError(f"{path}: its metadata says {rows} rows, its data holds {written // max(1, X.shape[1])}")


# ---------------------------------------------------------------- shared


def _extra(module: str, extra: str, path: Path, what: str):
    """Import an optional extra's module, or one error naming the pip install line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        name = module.partition(".")[0]
        raise ValueError(f'{path}: reading {what} needs {name}, which is not installed: pip install "distbp[{extra}]"'
                         ) from None


@contextlib.contextmanager
def _errors(path: Path, what: str):
    """An error of the file's library (a corrupt or truncated file, a page that does not decode) as one
    ValueError naming the file; this module's own errors, which name it already, pass as they are."""
    try:
        yield
    except ValueError as error:
        if str(error).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: cannot read it as {what}: {error}") from error
    except (OSError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: cannot read it as {what}: {error}") from error
    except Exception as error:  # pyarrow's ArrowException (its others are ValueError, OSError…), h5py's own
        if type(error).__module__.partition(".")[0] not in ("pyarrow", "h5py"):
            raise
        raise ValueError(f"{path}: cannot read it as {what}: {error}") from error


def _check_named(path: Path, what: str, names: list[str], wanted: list[str], flag: str) -> None:
    missing = [name for name in wanted if name not in names]
    if missing:
        shown = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
        raise ValueError(f"{path}: no {what} {missing[0]!r} (named by {flag}); its {what}s are {shown}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"{path}: {flag} must name distinct {what}s, got {', '.join(wanted)}")


def _check_features_named(path: Path, what: str, names: list[str] | None, features: list[str], targets: list[str],
                          weights: str | None) -> None:
    """The features: present (where `names` lists what there is), distinct, and neither targets nor weights."""
    if not features:
        raise ValueError(f"{path}: no feature {what}s: every {what} is a target or the weights")
    if names is not None:
        _check_named(path, what, names, features, "--features")
    elif len(set(features)) != len(features):
        raise ValueError(f"{path}: --features must name distinct {what}s, got {', '.join(features)}")
    both = [name for name in features if name in targets or name == weights]
    if both:
        role = "the weights" if both[0] == weights else "a target"
        raise ValueError(f"{path}: {what} {both[0]!r} is named as a feature and as {role}")


def _stacked(path: Path, columns: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """One target as it is; several side by side (`formats.stack_targets`: numbers only)."""
    return formats.stack_targets(columns, names, str(path))["y"]


def _where(path: Path, what: str, names: list[str]) -> str:
    """What an array came from, for errors: 'data.parquet, column label'."""
    return f"{path}, {what}{'s' if len(names) > 1 else ''} {', '.join(names)}"


def feature_rows(path: Path, features: list[str] | None = None) -> np.ndarray:
    """The rows a model predicts on, (rows, features), from a Parquet or HDF5 file: the columns or datasets
    named by `features` (default: a Parquet file's every column but a pandas index; an HDF5 file's dataset X),
    side by side in their common numpy type, in memory (distbp predict writes every row's outputs anyway)."""
    if path.suffix == ".parquet":
        pq = _extra("pyarrow.parquet", "parquet", path, "a Parquet file")
        with _errors(path, "a Parquet file"):
            file = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        with contextlib.closing(file):
            schema = file.schema_arrow
            index = [c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
            names = list(features) if features else [n for n in schema.names if n not in index]
            _check_named(path, "column", schema.names, names, "--features")
            dtype = np.result_type(*(_parquet_number(path, name, schema.field(name).type) for name in names))
            X = np.empty((file.metadata.num_rows, len(names)), dtype)
            for row, column, block in _parquet_blocks(file, path, names, dtype):
                X[row:row + block.shape[0], column:column + block.shape[1]] = block
        return X
    h5py = _extra("h5py", "hdf5", path, "an HDF5 file")
    names = list(features or ["X"])
    with _errors(path, "an HDF5 file"), h5py.File(path, "r") as file:
        sets = [_dataset(file, path, name, "--features") for name in names]
        columns = [_hdf5_read(ds).reshape(ds.shape[0], -1) for ds in sets]
    if len({c.shape[0] for c in columns}) > 1:
        raise ValueError(f"{path}: the feature datasets {', '.join(names)} have different row counts "
                         f"({', '.join(str(c.shape[0]) for c in columns)})")
    return np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]
