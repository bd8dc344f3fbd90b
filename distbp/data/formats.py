"""Readers of the dataset file formats (see docs/data.md): .npz, a folder of .npy files, MNIST's IDX
files (optionally gzipped), CSV. Each returns the raw arrays X, y (and X_test, y_test when the source
has them) for `distbp.data` to validate, split and scale; each names the file in its errors and reads
no more than the file's own header says it holds.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from distbp.data import cache as datacache
from distbp.host import meminfo


def read_npz(path: Path, targets: list[str] | None = None) -> dict:
    """X, y (X_test, y_test) and the rows' weights w (w_test) of an .npz; y is the members named by `targets`
    (and y_test their NAME_test members) side by side, when given (`stack_targets`)."""
    _check_magic(path, b"PK", "an .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if targets is None and ("X" not in archive.files or "y" not in archive.files):
                raise ValueError(f"needs arrays 'X' and 'y', found {archive.files}")
            names = target_files(targets, "X_test" in archive.files)
            missing = [name for name in ("X", *names) if name not in archive.files]
            if missing:
                raise ValueError(f"no array {missing[0]!r} (named by --targets); its arrays are "
                                 f"{', '.join(archive.files)}")
            keys = [key for key in ("X", "w", "X_test", "w_test") if key in archive.files] + names
            if targets is None:
                keys = [key for key in ("X", "y", "w", "X_test", "y_test", "w_test") if key in archive.files]
            # the members' headers say how big they are: refuse what cannot fit before decompressing any
            check_fits_memory(path, sum(_npz_member_bytes(archive, key) for key in keys), "its arrays")
            arrays = {key: archive[key] for key in keys}
        return arrays if targets is None else stack_targets(arrays, targets, str(path))
    except MemoryError as error:
        raise ValueError(f"{path}: cannot read: out of memory ({error})") from error
    except Exception as error:  # zip, zlib and header errors all mean a corrupt file
        if isinstance(error, ValueError) and str(error).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: cannot read: {error}") from error


def _npz_member_bytes(archive, key: str) -> int:
    """Bytes of the array `key` of an open .npz, from its .npy header alone."""
    with archive.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(member) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(member))
    return math.prod(shape) * dtype.itemsize  # Python integers: a huge header cannot wrap around


def _npy(path: Path) -> np.ndarray:
    _check_magic(path, b"\x93NUMPY", "a .npy file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path}: cannot read: {error}") from error


def read_npy_directory(path: Path, targets: list[str] | None = None) -> tuple[dict, dict]:
    """Memory-mapped X, y (X_test, y_test) and the file each came from; y is the files NAME.npy of `targets`
    (and y_test their NAME_test.npy) side by side, when given (`stack_targets`, in memory)."""
    if targets is not None:
        names = target_files(targets, (path / "X_test.npy").exists())
        missing = [name for name in names if not (path / f"{name}.npy").exists()]
        if missing:
            raise FileNotFoundError(f"{path}: no {missing[0]}.npy (named by --targets); its files are "
                                    f"{', '.join(sorted(p.name for p in path.glob('*.npy')))}")
        keys = ["X", *names, *(key for key in ("X_test", "w", "w_test") if (path / f"{key}.npy").exists())]
        files = {key: path / f"{key}.npy" for key in keys}
        arrays = stack_targets({key: _npy(file) for key, file in files.items()}, targets, str(path))
        files["y"] = ", ".join(str(files[name]) for name in targets)
        if "y_test" in arrays:
            files["y_test"] = ", ".join(str(files[f"{name}_test"]) for name in targets)
        return arrays, files
    if not (path / "y.npy").exists():
        raise FileNotFoundError(f"{path}: has X.npy but no y.npy")
    if (path / "X_test.npy").exists() != (path / "y_test.npy").exists():
        raise FileNotFoundError(f"{path}: X_test.npy and y_test.npy must both be present or both absent")
    keys = ("X", "y", "X_test", "y_test") if (path / "X_test.npy").exists() else ("X", "y")
    keys += tuple(key for key in ("w", "w_test") if (path / f"{key}.npy").exists())  # the rows' weights
    return {key: _npy(path / f"{key}.npy") for key in keys}, {key: path / f"{key}.npy" for key in keys}


def target_files(targets: list[str] | None, with_test: bool) -> list[str]:
    """The members (or files) that `targets` names: each NAME, and NAME_test where there is a test split."""
    if targets is None:
        return []
    if len(set(targets)) != len(targets) or not targets:
        raise ValueError(f"--targets must name distinct members, got {targets}")
    reserved = [t for t in targets if t in ("X", "X_test", "w", "w_test")]
    if reserved:
        raise ValueError(f"--targets {reserved[0]}: that array holds the features or the weights, not targets")
    return [*targets, *(f"{name}_test" for name in targets if with_test)]


def stack_targets(arrays: dict, targets: list[str], where: str) -> dict:
    """arrays with the members named by `targets` (each (rows,) or (rows, k)) as y, side by side: one member
    as it is (it may hold strings), several as the columns of one (rows, Σk) array of numbers; their _test
    members likewise as y_test."""
    def stack(names: list[str]) -> np.ndarray:
        parts = [arrays.pop(name) for name in names]
        if len(parts) == 1:
            return parts[0]
        for name, part in zip(names, parts):
            if part.ndim not in (1, 2) or part.dtype.kind not in "biuf":
                raise ValueError(f"{where}: {name} must hold numbers (rows,) or (rows, k) to stand beside "
                                 f"{', '.join(n for n in names if n != name)}, got {part.dtype} {part.shape}")
            if len(part) != len(parts[0]):
                raise ValueError(f"{where}: {name} has {len(part)} rows, {names[0]} has {len(parts[0])}")
        return np.column_stack(parts)

    test = [f"{name}_test" for name in targets if f"{name}_test" in arrays]
    out = {"y": stack(list(targets))}
    if test:
        out["y_test"] = stack(test)
    return arrays | out


IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _idx_file(directory: Path, stem: str) -> Path | None:
    # mirrors spell the files with '-' or '.' before 'idx', gzipped or not.
    for name in (stem, stem.replace("-idx", ".idx")):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def _idx(path: Path) -> np.ndarray:
    """Parse an IDX file: 2 zero bytes, dtype code, ndim, ndim big-endian uint32 dims, then the data.

    Returns (n, prod(other dims)) for ndim > 1, else (n,): a memmap of the file, or for a gzipped file of the
    data cache's unpacked copy (`_unpacked_idx`), or else the data decompressed into memory.
    """
    gzipped = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as stream:
            dims, dtype, header = _idx_header(path, stream.read(1024))
    except (OSError, EOFError, zlib.error) as error:  # bad gzip header, truncated or corrupt stream
        raise _unreadable(path, error) from error
    count = math.prod(dims)  # Python integers: no 64-bit wrap-around
    expected = header + count * dtype.itemsize
    shape = (dims[0], math.prod(dims[1:])) if len(dims) > 1 else (dims[0],)
    if not gzipped:
        size = path.stat().st_size
        if size != expected:
            raise ValueError(f"{path}: IDX dims {tuple(dims)} need {expected} bytes, the file has {size}")
        _check_not_empty(path, dims)
        return np.memmap(path, dtype=dtype, mode="r", offset=header, shape=shape)
    _check_not_empty(path, dims)  # an empty set is refused before anything is unpacked
    entry = datacache.file_entry("idx", path, expected - header)
    unpacked = (datacache.shared(entry, lambda folder: _unpack_idx(path, dims, dtype, header, shape, folder))
                if entry is not None else None)
    if unpacked is not None:
        return unpacked["X"]
    # no data cache (off, unsafe, full): each rank decompresses its own copy; refuse what cannot fit on this
    # node, from the header, and never read past what the header says
    _check_idx_fits(path, expected)
    chunks = []
    with _gzip_errors(path), gzip.open(path, "rb") as stream:
        for chunk in _idx_payload(path, stream, dims, header, expected - header):
            chunks.append(chunk)
    return np.frombuffer(b"".join(chunks), dtype=dtype).reshape(shape)


def _unpack_idx(path: Path, dims: list[int], dtype: np.dtype, header: int, shape: tuple, folder: Path) -> dict:
    """Decompress a gzipped IDX's data into folder/X.npy, a chunk at a time (never the whole in memory);
    return its meta.json record for the data cache (`datacache.shared`)."""
    digest = hashlib.sha256()
    with open(folder / "X.npy", "wb") as out, _gzip_errors(path), gzip.open(path, "rb") as stream:
        np.lib.format.write_array_header_1_0(
            out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
        for chunk in _idx_payload(path, stream, dims, header, math.prod(dims) * dtype.itemsize):
            out.write(chunk)
            digest.update(chunk)
    return {"shapes": {"X": list(shape)}, "dtypes": {"X": dtype.str}, "sha256": {"X": digest.hexdigest()}}


UNPACK_CHUNK = 1 << 20  # bytes decompressed at a time


def _idx_payload(path: Path, stream, dims: list[int], header: int, nbytes: int):
    """The nbytes of data after an IDX header from a decompressing stream, in chunks; a ValueError naming the
    file and the true sizes when the stream holds fewer, or more (it is never read past one byte more)."""
    stream.read(header)
    left = nbytes
    while left:
        chunk = stream.read(min(left, UNPACK_CHUNK))
        if not chunk:
            raise ValueError(f"{path}: IDX dims {tuple(dims)} need {header + nbytes} bytes, the file has "
                             f"{header + nbytes - left}")
        left -= len(chunk)
        yield chunk
    if stream.read(1):
        raise ValueError(f"{path}: IDX dims {tuple(dims)} need {header + nbytes} bytes, the file has "
                         f"{header + nbytes + 1} or more")


@contextlib.contextmanager
def _gzip_errors(path: Path):
    """A truncated or corrupt gzip stream as one ValueError naming the file."""
    try:
        yield
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: Path, error: Exception) -> ValueError:
    if path.suffix != ".gz":
        return ValueError(f"{path}: cannot read: {error}")
    return ValueError(f"{path}: corrupt gzip: {error}")


def _check_not_empty(path: Path, dims: list[int]) -> None:
    if 0 in dims:
        raise ValueError(f"{path}: empty dataset (IDX dims {tuple(dims)})")


def _idx_header(path: Path, head: bytes) -> tuple[list[int], np.dtype, int]:
    """(dims, dtype, header bytes) from the first bytes of an IDX file."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        raise ValueError(f"{path}: not an IDX file (magic number {head[:4].hex() or 'missing'})")
    ndim, dtype = head[3], np.dtype(IDX_DTYPES[head[2]])
    header = 4 + 4 * ndim
    if len(head) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(head)} bytes, {ndim} dims need {header})")
    return [int(d) for d in np.frombuffer(head[4:header], dtype=">u4")], dtype, header


def _check_idx_fits(path: Path, nbytes: int) -> None:
    """Refuse a gzipped IDX whose header claims more than this node's ranks, each decompressing its own copy,
    can hold. The message names only what every rank sees alike (the claim, the ranks, the machine's total),
    so that the ranks agree on one error."""
    short = meminfo.node_shortfall(nbytes)
    if short is not None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        raise ValueError(f"{path}: its header claims {nbytes / 2**30:.1f} GiB of data{short.each}, more than this "
                         f"machine's {total / 2**30:.1f} GiB of memory has available")


def check_fits_memory(path: Path, nbytes: int, what: str) -> None:
    """Refuse to read `nbytes` of `path` when this node's ranks, each reading its own copy, would not fit.

    Every rank holds the whole dataset, so the ranks sharing this node need nbytes each.
    """
    short = meminfo.node_shortfall(nbytes)
    if short is not None:
        raise ValueError(f"{path}: {what} need {nbytes / 2**20:,.0f} MiB{short.each}, more than the "
                         f"{short.available / 2**20:,.0f} MiB this machine has available")


def read_idx_directory(path: Path) -> tuple[dict, dict]:
    """MNIST train (and t10k) images and labels, and the file each came from."""
    images, labels = _idx_file(path, "train-images-idx3-ubyte"), _idx_file(path, "train-labels-idx1-ubyte")
    if images is None or labels is None:
        raise FileNotFoundError(f"{path}: no X.npy/y.npy and no MNIST train-images-idx3-ubyte/"
                                f"train-labels-idx1-ubyte (optionally .gz)")
    files = {"X": images, "y": labels}
    test_images, test_labels = _idx_file(path, "t10k-images-idx3-ubyte"), _idx_file(path, "t10k-labels-idx1-ubyte")
    if (test_images is None) != (test_labels is None):
        raise FileNotFoundError(f"{path}: t10k images and labels must both be present or both absent")
    if test_images is not None:
        files["X_test"], files["y_test"] = test_images, test_labels
    return {key: _idx(file) for key, file in files.items()}, files


CSV_CHUNK_ROWS = 4096  # rows parsed into Python floats at a time, then packed into a float64 block


def read_csv(path: Path, weights: str | None = None, targets: list[str] | None = None, kind: str = "auto") -> dict:
    """Header row, then rows; returns {"X", "y", ("w"), "columns"}.

    y is the columns named by `targets` (default: 'label' if present, else the last one), "columns" their
    names; the column named `weights` (if given) holds each row's weight, returned as "w" and not a
    feature. Features are numbers. Targets are numbers ((rows,) for one column: int64 when every cell is a
    whole number, else float64; (rows, k) float64 for several), except that one target column of words
    (class names) comes back as text (rows,), unless `kind` is "values" (mse), whose targets are numbers.
    Kind "auto" (today's rule) refuses a non-integer label.

    Bounded: rows are parsed a block at a time into float64 arrays, so the reader holds the table's
    8 bytes per cell plus one block of Python floats. After each block it projects the table's rows
    from the share of the file read so far and stops with an error as soon as the rest (and the final
    copy) would not fit in the memory this machine has available: a file that cannot fit is refused
    after its first block, not when the machine runs out. A column of words is found on its first word;
    the file is then read again, keeping that column's cells as text.
    """
    size = max(1, path.stat().st_size)

    def read(text: bool) -> dict:
        consumed = [0]

        def text_lines(stream):
            # decoded line by line, so that bytes that are no text are reported with their line
            for number, raw in enumerate(stream, start=1):
                consumed[0] += len(raw)
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise ValueError(f"{path}: line {number}: not a CSV table of UTF-8 text (byte "
                                     f"{raw[error.start]:#04x} at column {error.start + 1})") from None

        with open(path, "rb") as stream:
            reader = csv.reader(text_lines(stream))
            try:
                return _read_csv_rows(path, reader, size, consumed, weights, targets, kind, text)
            except csv.Error as error:  # a field past csv's limit, a broken quote
                raise ValueError(f"{path}: line {reader.line_num}: not a CSV table ({error})") from None

    try:
        return read(text=False)
    except _WordTargets:
        return read(text=True)


class _WordTargets(Exception):
    """The target column holds words: read the file again keeping them as text."""


def _read_csv_rows(path: Path, reader, size: int, consumed: list[int], weights: str | None = None,
                   targets: list[str] | None = None, kind: str = "auto", text: bool = False) -> dict:
    """read_csv's table from `reader`, a block of CSV_CHUNK_ROWS rows at a time (see read_csv); text: the one
    target column is kept as text."""
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty dataset (no header row)")
    wanted = _target_columns(path, header, targets)
    weight = None
    if weights is not None:
        if weights not in header:
            raise ValueError(f"{path}: no column {weights!r} for the weights; its columns are {', '.join(header)}")
        weight = header.index(weights)
        if weight in wanted:
            raise ValueError(f"{path}: column {weights!r} is the label column; the weights need a column of "
                             "their own")
    numeric = [i for i in range(len(header)) if not (text and i in wanted)]  # the cells parsed as numbers
    words = len(wanted) == 1 and kind != "values"  # may the target column hold words (class names)?
    blocks, block, labels, rows = [], [], [], 0
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} cells, the header has {len(header)}")
        try:
            block.append([float(row[i]) for i in numeric] if text else [float(cell) for cell in row])
        except ValueError:
            column = next(i for i in numeric if not is_number(row[i]))
            if words and column in wanted:
                raise _WordTargets() from None
            raise ValueError(_bad_cell(path, line, header, column, row[column], wanted, weight, kind)) from None
        if text:
            labels.append(row[wanted[0]].strip())
            if not labels[-1]:
                raise ValueError(f"{path}: line {line}, column {header[wanted[0]]!r}: empty label cell")
        if len(block) == CSV_CHUNK_ROWS:
            blocks.append(np.array(block))
            if text:
                blocks[-1] = (blocks[-1], np.array(labels))
                labels = []
            rows += len(block)
            block = []
            projected = int(rows * size / max(1, consumed[0]))
            # still to come: the blocks not read yet, and the final table that concatenates them all
            check_fits_memory(path, (2 * projected - rows) * len(header) * 8,
                              f"its about {projected:,} rows (projected from the first {rows:,})")
    if block:
        blocks.append((np.array(block), np.array(labels)) if text else np.array(block))
    if not blocks:
        raise ValueError(f"{path}: empty dataset (no rows after the header)")
    columns = [header[i] for i in wanted]
    if text:
        tables, words_seen = zip(*blocks)
        del blocks
        table = np.concatenate(tables) if len(tables) > 1 else tables[0]
        del tables
        y = np.concatenate(words_seen)
        drop = [] if weight is None else [numeric.index(weight)]
        out = {"X": np.delete(table, drop, axis=1) if drop else table, "y": y, "columns": columns}
        if weight is not None:
            out["w"] = table[:, numeric.index(weight)].copy()
        return out
    table = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    del blocks
    y = table[:, wanted].copy() if len(wanted) > 1 else _numeric_labels(path, table[:, wanted[0]], kind)
    out = {"X": np.delete(table, wanted + ([] if weight is None else [weight]), axis=1), "y": y, "columns": columns}
    if weight is not None:
        out["w"] = table[:, weight].copy()
    return out


def _target_columns(path: Path, header: list[str], targets: list[str] | None) -> list[int]:
    """The positions of the target columns: those `targets` names, else 'label' if present, else the last."""
    if targets is None:
        return [header.index("label") if "label" in header else len(header) - 1]
    missing = [name for name in targets if name not in header]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} for --targets; its columns are {', '.join(header)}")
    if len(set(targets)) != len(targets) or not targets:
        raise ValueError(f"{path}: --targets must name distinct columns, got {', '.join(targets)}")
    return [header.index(name) for name in targets]


def _numeric_labels(path: Path, y: np.ndarray, kind: str) -> np.ndarray:
    """One numeric target column: int64 when every cell is a whole number (labels), else float64 (targets,
    or labels that `distbp.data.targets` refuses); kind "auto" refuses non-integer labels, as it always has."""
    whole = np.isfinite(y) & (y == np.round(y))
    if whole.all() and kind != "values":
        return y.astype(np.int64)
    if kind == "auto":
        bad = int(np.flatnonzero(~whole)[0])
        raise ValueError(f"{path}: non-integer label {float(y[bad])!r} on line {bad + 2}")
    return y.copy()


LABEL_WORDS = ("label", "class", "target", "species", "category", "outcome", "diagnosis", "variety", "kind", "type")


def _bad_cell(path: Path, line: int, header: list[str], column: int, cell: str, wanted: list[int],
              weight: int | None, kind: str) -> str:
    """The error for a cell that is no number, with a hint when it looks like labels in a feature column."""
    name = header[column]
    where = f"{path}: line {line}, column {name!r}: non-numeric cell {cell!r}"
    if column in wanted and kind == "values":
        return where + ": regression targets (--loss mse) are numbers; class names need --loss cross_entropy"
    if column in wanted:
        return where + f": {len(wanted)} target columns hold numbers (0/1 for multilabel); class names stand in one"
    if column == weight:
        return where + " (a weight)"
    # a label column not named as one: a word in a column named like labels, or in the first or last column
    if any(word in name.lower() for word in LABEL_WORDS) or name.lower() == "y" or column in (0, len(header) - 1):
        return where + f"; if column {name!r} holds the labels, name it with --targets {name}"
    return where
def is_number(cell: str) -> bool:
    """True when a CSV cell reads as a number (float() accepts it)."""
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _check_magic(path: Path, magic: bytes, what: str) -> None:
    with open(path, "rb") as stream:
        start = stream.read(len(magic))
    if start != magic:
        raise ValueError(f"{path}: not {what} (starts with {start!r})")
