"""Global batches and rank slices: every row once per epoch, every batch split exactly across ranks."""

import subprocess
import sys

import numpy as np
import pytest

from distbp.data.shard import (
    epoch_permutation,
    global_batches,
    max_shard_rows,
    rank_slice,
)


def test_permutation_is_a_permutation_of_all_rows():
    perm = epoch_permutation(1000, seed=3, epoch=0)
    assert perm.dtype == np.int64
    assert np.array_equal(np.sort(perm), np.arange(1000))


def test_permutation_is_the_same_in_another_process():
    # what every rank and a resumed run rely on: the permutation is a function of (rows, seed, epoch) alone,
    # not of the process that draws it (tests/unit/test_golden.py pins its values across machines)
    code = "import sys; from distbp.data.shard import epoch_permutation; sys.stdout.write(epoch_permutation(500, 7, 2).tobytes().hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert bytes.fromhex(other.stdout) == epoch_permutation(500, 7, 2).tobytes()


def test_permutation_differs_per_epoch_and_per_seed():
    assert not np.array_equal(epoch_permutation(500, 7, 0), epoch_permutation(500, 7, 1))
    assert not np.array_equal(epoch_permutation(500, 7, 0), epoch_permutation(500, 8, 0))


def test_resumed_run_gets_the_epoch_permutation_back_without_earlier_epochs():
    # a run that starts at epoch 3 (a resume) draws nothing for epochs 0-2; its permutation must still be the
    # one an uninterrupted run drew after them, in a process that drew no other
    code = "import sys; from distbp.data.shard import epoch_permutation; sys.stdout.write(epoch_permutation(300, 5, 3).tobytes().hex())"
    history = [epoch_permutation(300, 5, e) for e in range(4)]
    resumed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert bytes.fromhex(resumed.stdout) == history[3].tobytes()
    assert not np.array_equal(history[3], history[2])


def test_global_batches_cover_all_rows_in_order():
    batches = global_batches(10, 4)
    assert batches == [(0, 4), (4, 8), (8, 10)]


def test_last_partial_batch_is_present_not_dropped():
    for n_rows in range(1, 40):
        for batch_size in range(1, 12):
            batches = global_batches(n_rows, batch_size)
            assert batches[0][0] == 0 and batches[-1][1] == n_rows
            assert all(a[1] == b[0] for a, b in zip(batches, batches[1:]))
            assert all(0 < stop - start <= batch_size for start, stop in batches)
            assert len(batches) == -(-n_rows // batch_size)


def test_batch_larger_than_dataset_is_one_batch():
    assert global_batches(5, 100) == [(0, 5)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_rank_slices_cover_each_batch_exactly_in_rank_order(size):
    for batch_rows in range(0, 30):
        slices = [rank_slice(batch_rows, r, size) for r in range(size)]
        assert slices[0][0] == 0 and slices[-1][1] == batch_rows
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
        lengths = [stop - start for start, stop in slices]
        assert max(lengths) - min(lengths) <= 1
        assert sum(lengths) == batch_rows


def test_rank_slices_may_be_empty_when_batch_is_smaller_than_size():
    slices = [rank_slice(2, r, 5) for r in range(5)]
    assert slices == [(0, 1), (1, 2), (2, 2), (2, 2), (2, 2)]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_max_shard_rows_bounds_every_slice_of_every_batch(size):
    for batch_size in range(1, 30):
        bound = max_shard_rows(batch_size, size)
        largest = max(
            stop - start
            for n_rows in range(1, 2 * batch_size + 1)
            for b0, b1 in global_batches(n_rows, batch_size)
            for start, stop in (rank_slice(b1 - b0, r, size) for r in range(size))
        )
        assert largest == bound


def test_ranks_together_see_every_row_of_the_epoch_once():
    n_rows, batch_size, size = 103, 16, 3
    perm = epoch_permutation(n_rows, seed=1, epoch=4)
    seen = []
    for b0, b1 in global_batches(n_rows, batch_size):
        for r in range(size):
            start, stop = rank_slice(b1 - b0, r, size)
            seen.append(perm[b0 + start : b0 + stop])
    assert np.array_equal(np.concatenate(seen), perm)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: global_batches(10, 0), "batch_size"),
        (lambda: global_batches(10, -3), "batch_size"),
        (lambda: global_batches(0, 4), "n_rows"),
        (lambda: epoch_permutation(0, 1, 0), "n_rows"),
        (lambda: epoch_permutation(-5, 1, 0), "n_rows"),
        (lambda: rank_slice(10, 3, 3), "rank"),
        (lambda: rank_slice(10, -1, 3), "rank"),
        (lambda: rank_slice(10, 0, 0), "size"),
        (lambda: max_shard_rows(0, 2), "batch_size"),
        (lambda: max_shard_rows(8, 0), "size"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
