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


def read_npz(path: Path) -> dict:
    _check_magic(path, b"PK", "an .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "X" not in archive.files or "y" not in archive.files:
                raise ValueError(f"needs arrays 'X' and 'y', found {archive.files}")
            keys = [key for key in ("X", "y", "w", "X_test", "y_test", "w_test") if key in archive.files]
            # the members' headers say how big they are: refuse what cannot fit before decompressing any
            check_fits_memory(path, sum(_npz_member_bytes(archive, key) for key in keys), "its arrays")
            return {key: archive[key] for key in keys}
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


def read_npy_directory(path: Path) -> tuple[dict, dict]:
    """Memory-mapped X, y (X_test, y_test) and the file each came from."""
    if not (path / "y.npy").exists():
        raise FileNotFoundError(f"{path}: has X.npy but no y.npy")
    if (path / "X_test.npy").exists() != (path / "y_test.npy").exists():
        raise FileNotFoundError(f"{path}: X_test.npy and y_test.npy must both be present or both absent")
    keys = ("X", "y", "X_test", "y_test") if (path / "X_test.npy").exists() else ("X", "y")
    keys += tuple(key for key in ("w", "w_test") if (path / f"{key}.npy").exists())  # the rows' weights
    return {key: _npy(path / f"{key}.npy") for key in keys}, {key: path / f"{key}.npy" for key in keys}


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


def read_csv(path: Path, weights: str | None = None) -> dict:
    """Header row, then numeric rows; the label column is 'label' if present, else the last one; the column
    named `weights` (if given) holds each row's weight, returned as "w" and not a feature.

    Bounded: rows are parsed a block at a time into float64 arrays, so the reader holds the table's
    8 bytes per cell plus one block of Python floats. After each block it projects the table's rows
    from the share of the file read so far and stops with an error as soon as the rest (and the final
    copy) would not fit in the memory this machine has available: a file that cannot fit is refused
    after its first block, not when the machine runs out.
    """
    size = max(1, path.stat().st_size)
    consumed = [0]

    def text_lines(stream):
        # decoded line by line, so that bytes that are no text are reported with their line
        for number, raw in enumerate(stream, start=1):
            consumed[0] += len(raw)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}: line {number}: not a CSV table of UTF-8 text (byte {raw[error.start]:#04x} "
                                 f"at column {error.start + 1})") from None

    with open(path, "rb") as stream:
        reader = csv.reader(text_lines(stream))
        try:
            return _read_csv_rows(path, reader, size, consumed, weights)
        except csv.Error as error:  # a field past csv's limit, a broken quote
            raise ValueError(f"{path}: line {reader.line_num}: not a CSV table ({error})") from None


def _read_csv_rows(path: Path, reader, size: int, consumed: list[int], weights: str | None = None) -> dict:
    """read_csv's table from `reader`, a block of CSV_CHUNK_ROWS rows at a time (see read_csv)."""
    header = next(reader, None)
    if not header:
        raise ValueError(f"{path}: empty dataset (no header row)")
    label = header.index("label") if "label" in header else len(header) - 1
    weight = None
    if weights is not None:
        if weights not in header:
            raise ValueError(f"{path}: no column {weights!r} for the weights; its columns are {', '.join(header)}")
        weight = header.index(weights)
        if weight == label:
            raise ValueError(f"{path}: column {weights!r} is the label column; the weights need a column of "
                             "their own")
    blocks, block, rows = [], [], 0
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}: line {line} has {len(row)} cells, the header has {len(header)}")
        try:
            block.append([float(cell) for cell in row])
        except ValueError:
            column = next(i for i, cell in enumerate(row) if not is_number(cell))
            raise ValueError(f"{path}: line {line}, column {header[column]!r}: "
                             f"non-numeric cell {row[column]!r}") from None
        if len(block) == CSV_CHUNK_ROWS:
            blocks.append(np.array(block))
            rows += len(block)
            block = []
            projected = int(rows * size / max(1, consumed[0]))
            # still to come: the blocks not read yet, and the final table that concatenates them all
            check_fits_memory(path, (2 * projected - rows) * len(header) * 8,
                              f"its about {projected:,} rows (projected from the first {rows:,})")
    if block:
        blocks.append(np.array(block))
    if not blocks:
        raise ValueError(f"{path}: empty dataset (no rows after the header)")
    table = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    del blocks
    y = table[:, label]
    if not (np.isfinite(y) & (y == np.round(y))).all():
        bad = int(np.flatnonzero(~(np.isfinite(y) & (y == np.round(y))))[0])
        raise ValueError(f"{path}: non-integer label {float(y[bad])!r} on line {bad + 2}")
    if weight is None:
        return {"X": np.delete(table, label, axis=1), "y": y.astype(np.int64)}
    return {"X": np.delete(table, [label, weight], axis=1), "y": y.astype(np.int64), "w": table[:, weight].copy()}


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
