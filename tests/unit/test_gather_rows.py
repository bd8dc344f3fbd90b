"""A batch's rows gathered in one compiled pass (distbp.data.rows) give the bits of numpy's take, subtract and
multiply, for every source the data can hold; a row outside the split is one IndexError and leaves the buffer
as it was; sources Numba cannot read take numpy's path."""

import numpy as np
import pytest

from distbp.data.datasets import Split, _take_scaled
from distbp.data.rows import compiled_for

ROWS, FEATURES = 50, 7


def split_of(X, index=None, scaled=True):
    rng = np.random.default_rng(1)
    n = len(X) if index is None else len(index)
    offset = rng.standard_normal(FEATURES) if scaled else np.zeros(FEATURES)
    factor = rng.uniform(0.5, 2, FEATURES) if scaled else np.ones(FEATURES)
    return Split(X, np.arange(n) % 3, index, offset, factor, 3)


def numpy_gather(split, rows, dtype):
    out = np.empty((len(rows), FEATURES), dtype)
    source_rows = rows if split.index is None else split.index[rows]
    _take_scaled(split.X, source_rows, out, *split._scaling_in(np.dtype(dtype)))
    return out


@pytest.mark.parametrize("source", ["float64", "float32", "uint8", "int64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scaled", [True, False])
def test_the_compiled_gather_gives_numpys_bits(source, dtype, scaled):
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((ROWS, FEATURES)) * 50).astype(source)
    split = split_of(X, scaled=scaled)
    assert compiled_for(split.X)
    rows = rng.integers(0, ROWS, 20).astype(np.int64)
    X_out, y_out = np.empty((20, FEATURES), dtype), np.empty(20, np.int64)
    split.gather(rows, X_out, y_out)
    assert np.array_equal(X_out.view(np.uint8), numpy_gather(split, rows, dtype).view(np.uint8))
    assert np.array_equal(y_out, split.y[rows])


def test_rows_through_an_index_read_the_rows_it_names():
    X = np.arange(ROWS * FEATURES, dtype=np.float64).reshape(ROWS, FEATURES)
    index = np.array([40, 3, 17, 8], np.int64)
    split = split_of(X, index=index, scaled=False)
    X_out, y_out = np.empty((3, FEATURES), np.float64), np.empty(3, np.int64)
    split.gather(np.array([2, 0, 2]), X_out, y_out)
    assert np.array_equal(X_out, X[[17, 40, 17]])


@pytest.mark.parametrize("bad", [-1, ROWS])
def test_a_row_outside_the_split_is_one_index_error_and_leaves_the_buffer(bad):
    split = split_of(np.ones((ROWS, FEATURES)))
    X_out = np.full((3, FEATURES), 7.0, np.float32)
    with pytest.raises(IndexError, match=rf"rows must lie in \[0, {ROWS}\)"):
        split.gather(np.array([0, bad, 1], np.int64), X_out, np.empty(3, np.int64))
    assert (X_out == 7).all()


def test_a_big_endian_source_takes_numpys_path_with_the_same_values():
    rng = np.random.default_rng(2)
    native = rng.standard_normal((ROWS, FEATURES))
    swapped = native.astype(">f8")
    assert not compiled_for(swapped) and compiled_for(native)
    rows = np.array([5, 1, 49], np.int64)
    outs = []
    for X in (native, swapped):
        out = np.empty((3, FEATURES), np.float32)
        split_of(X).gather(rows, out, np.empty(3, np.int64))
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("labels", ["int64", "int64 strided"])
def test_class_numbers_come_with_their_rows_whatever_their_layout(labels):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 2 * ROWS)
    y = y[::2] if labels == "int64 strided" else y[:ROWS]
    split = Split(np.ones((ROWS, FEATURES)), y, None, np.zeros(FEATURES), np.ones(FEATURES), 5)
    rows = rng.integers(0, ROWS, 30).astype(np.int64)
    y_out = np.full(30, -1, np.int64)
    split.gather(rows, np.empty((30, FEATURES)), y_out)
    assert np.array_equal(y_out, y[rows])
