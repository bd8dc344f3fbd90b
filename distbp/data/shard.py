"""Global mini-batches and the slice of each one that a rank computes on.

Every rank draws the same permutation of the training rows for an epoch, cuts it
into the same global batches, and takes its own contiguous slice of each batch.
The union of the slices over ranks is the global batch, in rank order, so p ranks
see exactly the examples that one rank would see (see GUIDE, "Uneven shards are
exact"). A batch plan says which rows a rank computes at each step: `SharedRows` for that case,
`LocalRows` when each rank holds only its own rows. Pure numpy; no MPI here.
"""

from __future__ import annotations

import math

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


# ---- batch plans: which rows this rank computes at each step of an epoch ------------------------

class SharedRows:
    """Every rank holds every row: the same permutation and global batches on every rank, and this rank
    computes its strategy's share of each (`my_rows`, e.g. rank_slice). p ranks see what one rank sees.

    shuffle=False takes the rows in stored order every epoch (one global order, whatever the layout)."""

    def __init__(self, n_rows: int, batch_size: int, seed: int, my_rows, rank: int = 0, size: int = 1,
                 shuffle: bool = True):
        self.n_rows, self.batch_size, self.seed, self.shuffle = n_rows, batch_size, seed, shuffle
        self.my_rows, self.rank, self.size = my_rows, rank, size
        self.bounds = global_batches(n_rows, batch_size)

    @property
    def n_batches(self) -> int:
        return len(self.bounds)

    @property
    def train_rows(self) -> int:
        """Rows of one epoch over all ranks."""
        return self.n_rows

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        """(this rank's rows (int64 indices into its training split), the global batch's rows) per step."""
        perm = (epoch_permutation(self.n_rows, self.seed, epoch) if self.shuffle
                else np.arange(self.n_rows, dtype=np.int64))
        out, shares = [], {}  # this rank's share of a batch of k rows, worked out once per k (k is one or two sizes)
        for start, stop in self.bounds:
            k = stop - start
            if k not in shares:
                shares[k] = self.my_rows(k)
            r0, r1 = shares[k]
            out.append((perm[start + r0:start + r1], k))
        return out

    def eval_share(self, n_rows: int) -> tuple[int, int, int]:
        """(start, stop) of the held-out rows this rank scores, and the rows scored over all ranks."""
        return (*rank_slice(n_rows, self.rank, self.size), n_rows)

    def batch_weights(self, epoch: int, w: np.ndarray) -> list[float]:
        """Σ wₙ of each global batch of `epoch` (w: the training rows' weights), correctly rounded (math.fsum):
        the same bits on every rank and layout, as the divisor of --lr-scale mean."""
        perm = (epoch_permutation(self.n_rows, self.seed, epoch) if self.shuffle
                else np.arange(self.n_rows, dtype=np.int64))
        return [math.fsum(w[perm[start:stop]]) for start, stop in self.bounds]


class LocalRows:
    """Each rank holds its own rows (counts[r] on rank r, N in all), as with data too big for one node.

    An epoch has S = ceil(N / batch_size) steps on every rank; each rank permutes its own rows (seeded by
    seed, epoch and its rank) and cuts them into S near-equal contiguous pieces, and the global batch of
    a step is the ranks' pieces together: about batch_size rows, every row once per epoch. This is not
    the batching of one rank holding all rows, so it does not match a 1-rank run.
    """

    def __init__(self, counts: list[int], test_counts: list[int], rank: int, batch_size: int, seed: int,
                 shuffle: bool = True):
        _check_positive("batch_size", batch_size)
        self.counts, self.test_counts, self.rank, self.seed = list(counts), list(test_counts), rank, seed
        self.shuffle = shuffle  # False: each rank takes its own rows in stored order
        self.n_batches = -(-sum(self.counts) // batch_size)

    @property
    def train_rows(self) -> int:
        return sum(self.counts)

    def pieces(self, n: int) -> list[tuple[int, int]]:
        """(start, stop) of each step's piece of n permuted rows."""
        S = self.n_batches
        return [(k * n // S, (k + 1) * n // S) for k in range(S)]

    @property
    def max_rows(self) -> int:
        """The most rows any rank computes in one step (for sizing buffers alike on every rank)."""
        return max(-(-n // self.n_batches) for n in self.counts)

    def epoch(self, epoch: int) -> list[tuple[np.ndarray, int]]:
        n = self.counts[self.rank]
        perm = (np.random.default_rng([self.seed, epoch, 1 + self.rank]).permutation(n).astype(np.int64)
                if self.shuffle else np.arange(n, dtype=np.int64))
        sizes = np.array([[b - a for a, b in self.pieces(c)] for c in self.counts]).sum(axis=0)
        return [(perm[a:b], int(rows)) for (a, b), rows in zip(self.pieces(n), sizes)]

    def eval_share(self, n_rows: int) -> tuple[int, int, int]:
        return 0, n_rows, sum(self.test_counts)

    def batch_weights(self, epoch: int, w: np.ndarray) -> None:
        """None: a global batch's rows are spread over the ranks, which sum their weights in the step."""
        return None
