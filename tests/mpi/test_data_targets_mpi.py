"""--local-rows: ranks that each hold their own rows agree on one label set and one target scaling, the ones a
single rank holding every row computes (issue 28).

    launch/local -n 2 --threads 1 python -m pytest -p no:cacheprovider --with-mpi -m mpi tests/mpi/test_data_targets_mpi.py
    launch/local -n 3 --threads 1 python -m pytest -p no:cacheprovider --with-mpi -m mpi tests/mpi/test_data_targets_mpi.py
"""

import numpy as np
import pytest

from distbp.comm.mpi import world
from distbp.data import localdata
from distbp.data.datasets import from_arrays
from distbp.errors import ConfigMismatchError

pytestmark = pytest.mark.mpi

ROWS = 41  # uneven over 2 and 3 ranks
NAMES = np.array(["ant", "bee", "cat", "dog", "eel"])


def features() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((ROWS, 3))


def my_rows(comm) -> np.ndarray:
    """This rank's contiguous share of the rows."""
    return np.array_split(np.arange(ROWS), comm.size)[comm.rank]


def agreed(comm, X, y, **options):
    data = from_arrays(X, y, **options)
    return localdata.agree(data, comm, scale="standardize", batch_size=8, seed=1)[0]


@pytest.mark.parametrize("y", [
    NAMES[np.arange(ROWS) * len(NAMES) // ROWS],  # sorted names: each rank holds only some of them
    # class numbers 0…2 on the first rank (no classes there), 2, 3, 7 beyond (mapped there)
    np.where(np.arange(ROWS) < 21, np.arange(ROWS) % 3, np.array([2, 3, 7])[np.arange(ROWS) % 3]),
], ids=["string labels", "class numbers on one rank, other integers on others"])
def test_ranks_with_different_label_sets_agree_on_the_union_one_rank_computes(y):
    comm = world()
    X, mine = features(), my_rows(comm)
    whole = from_arrays(X, y, kind="classes")
    data = agreed(comm, X[mine], y[mine], kind="classes")
    local_set = set(np.unique(y[mine]).tolist())
    assert comm.size == 1 or len(set(map(frozenset, comm.allgather_object(local_set)))) > 1  # the ranks differ
    assert data.n_classes == whole.n_classes and data.classes.tolist() == whole.classes.tolist()
    assert np.array_equal(data.train.y, whole.train.y[mine])  # every rank renumbered its rows for the union
    assert len({repr(c) for c in comm.allgather_object(data.classes.tolist())}) == 1


def test_merged_target_scaling_is_the_one_rank_scaling():
    comm = world()
    X, mine = features(), my_rows(comm)
    y = np.random.default_rng(9).standard_normal((ROWS, 3)) * [1.0, 30.0, 1e-3] + [0.0, 500.0, -2.0]
    whole = from_arrays(X, y, kind="values", scale_targets="standardize")
    data = agreed(comm, X[mine], y[mine], kind="values", scale_targets="standardize")
    np.testing.assert_allclose(data.target_offset, whole.target_offset, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(data.target_factor, whole.target_factor, rtol=1e-12)
    rows = np.arange(len(mine), dtype=np.int64)
    got, want = np.empty((len(mine), 3)), np.empty((ROWS, 3))
    data.train.gather(rows, np.empty((len(mine), 3)), got)
    whole.train.gather(np.arange(ROWS, dtype=np.int64), np.empty((ROWS, 3)), want)
    np.testing.assert_allclose(got, want[mine], rtol=1e-12, atol=1e-12)
    bits = comm.allgather_object((data.target_offset.tobytes(), data.target_factor.tobytes()))
    assert len(set(bits)) == 1  # the same bits on every rank


@pytest.mark.mpi(min_size=2)
def test_strings_on_one_rank_and_numbers_on_another_are_refused_on_every_rank():
    comm = world()
    X, mine = features(), my_rows(comm)
    y = NAMES[np.arange(ROWS) % 5][mine] if comm.rank == 1 else (np.arange(ROWS) % 5)[mine]
    with pytest.raises(ConfigMismatchError) as error:
        agreed(comm, X[mine], y, kind="classes")
    assert "rank 0 has numbers as labels; rank 1: strings as labels" in str(error.value)
    assert len(set(comm.allgather_object(str(error.value)))) == 1
