"""Global mini-batches and the slice of each one that a rank computes on.

Every rank draws the same permutation of the training rows for an epoch, cuts it
into the same global batches, and takes its own contiguous slice of each batch.
The union of the slices over ranks is the global batch, in rank order, so p ranks
see exactly the examples that one rank would see (see GUIDE, "Uneven shards are
exact"). Pure numpy; no MPI here.
"""

from __future__ import annotations

import numpy as np


def _check_positive(name: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> np.ndarray:
    """Permutation (int64, shape (n_rows,)) of range(n_rows) for one epoch.

    Drawn from a generator seeded with (seed, epoch) alone, so it is the same on
    every rank, for every rank count, and a run resumed at `epoch` gets it back
    without replaying earlier epochs.
    """
    _check_positive("n_rows", n_rows)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n_rows).astype(np.int64, copy=False)


def global_batches(n_rows: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) positions in the epoch permutation of each global batch.

    The last batch holds the remaining n_rows % batch_size rows when that is not
    zero: no row is dropped.
    """
    _check_positive("n_rows", n_rows)
    _check_positive("batch_size", batch_size)
    return [(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)]


def rank_slice(batch_rows: int, rank: int, size: int) -> tuple[int, int]:
    """(start, stop) of this rank's contiguous share of a global batch of batch_rows rows.

    The first batch_rows % size ranks get one row more than the others, so sizes
    differ by at most one; a rank's slice is empty when batch_rows < size and
    rank >= batch_rows.
    """
    if batch_rows < 0:
        raise ValueError(f"batch_rows must be non-negative, got {batch_rows}")
    _check_positive("size", size)
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    base, extra = divmod(batch_rows, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start, stop


def max_shard_rows(batch_size: int, size: int) -> int:
    """Largest slice any rank gets of a batch of at most batch_size rows (for preallocating buffers)."""
    _check_positive("batch_size", batch_size)
    _check_positive("size", size)
    return -(-batch_size // size)
