"""distbp.sklearn under MPI: every rank ends with the same fitted estimator, the one a single process fits.

Run by launch/test under MPI on 2, 3 and 4 ranks:
    launch/local -n 3 python -m pytest --with-mpi -m mpi tests/mpi/test_sklearn_mpi.py
Each rank also fits the 1-process reference itself (comm=SerialComm()), so the comparison needs no files.
"""

import hashlib

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")

from distbp.comm.serial import SerialComm  # noqa: E402
from distbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

quiet = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def data(regression: bool):
    """The same rows on every rank (a fixed seed), as every rank must pass to fit."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((150, 6))
    w = rng.standard_normal((6, 2))
    if regression:
        return X, X @ w + 0.1 * rng.standard_normal((150, 2))
    return X, np.array(["a", "b", "c"])[np.argmax(X @ np.c_[w, -w.sum(1)], axis=1)]


def all_ranks_hold(params: np.ndarray) -> bool:
    from mpi4py import MPI

    digests = MPI.COMM_WORLD.allgather(hashlib.sha256(params.tobytes()).hexdigest())
    return len(set(digests)) == 1


CASES = {  # batch 13 does not divide among 2, 3 or 4 ranks evenly; early stopping adds the validation pass
    "classifier sgd momentum": (MLPClassifier, dict(solver="sgd", momentum=0.9, learning_rate_init=0.05)),
    "classifier adam early stopping": (MLPClassifier, dict(solver="adam", learning_rate_init=0.01,
                                                           early_stopping=True, n_iter_no_change=2)),
    "regressor adam": (MLPRegressor, dict(solver="adam", learning_rate_init=0.01)),
    "classifier sgd alpha stored order": (MLPClassifier, dict(solver="sgd", momentum=0.5, learning_rate_init=0.05,
                                                              alpha=0.05, shuffle=False)),
    "regressor adam alpha": (MLPRegressor, dict(solver="adam", learning_rate_init=0.01, alpha=0.5)),
}


@quiet
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(CASES))
def test_every_rank_ends_with_the_one_process_fit(case):
    cls, params = CASES[case]
    X, y = data(regression=cls is MLPRegressor)
    make = lambda: cls(hidden_layer_sizes=(9,), batch_size=13, max_iter=4, random_state=3, dtype="float64",
                       **params)
    ranks = make().fit(X, y)
    one = make().fit(X, y, comm=SerialComm())
    assert all_ranks_hold(ranks.model_.flat_params)
    np.testing.assert_allclose(ranks.model_.flat_params, one.model_.flat_params, rtol=0, atol=1e-10)
    assert ranks.n_iter_ == one.n_iter_
    np.testing.assert_allclose(ranks.loss_curve_, one.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(ranks.predict(X), one.predict(X), rtol=0, atol=1e-9) if cls is MLPRegressor \
        else np.testing.assert_array_equal(ranks.predict(X), one.predict(X))


@quiet
@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_early_stopping_restores_the_one_process_best_epoch_on_every_rank(cls):
    # noisy rows and a large rate: the held-out score peaks before the last epoch, whose parameters are dropped;
    # the root keeps the best in its model file and every rank takes them from it
    X, y = data(regression=cls is MLPRegressor)
    y = np.random.default_rng(1).permutation(y)  # labels unrelated to X: the held-out score cannot keep rising
    make = lambda: cls(hidden_layer_sizes=(9,), solver="sgd", momentum=0.9, learning_rate_init=0.1, batch_size=13,
                       early_stopping=True, validation_fraction=0.3, n_iter_no_change=3, max_iter=30,
                       random_state=3, dtype="float64")
    ranks = make().fit(X, y)
    one = make().fit(X, y, comm=SerialComm())
    assert int(np.argmax(ranks.validation_scores_)) + 1 < ranks.n_iter_  # the best epoch was not the last
    assert all_ranks_hold(ranks.model_.flat_params)
    np.testing.assert_allclose(ranks.model_.flat_params, one.model_.flat_params, rtol=0, atol=1e-10)
    assert ranks.n_iter_ == one.n_iter_
    assert ranks.best_validation_score_ == pytest.approx(one.best_validation_score_, rel=1e-9)


@quiet
@pytest.mark.mpi(min_size=2)
def test_random_state_none_gives_every_rank_the_same_fit():
    # each rank draws its own seed; the estimator takes the root's, or the ranks would train different models
    X, y = data(regression=False)
    clf = MLPClassifier(hidden_layer_sizes=(9,), max_iter=2, random_state=None).fit(X, y)
    assert all_ranks_hold(clf.model_.flat_params)
    clf.partial_fit(X, y)
    assert all_ranks_hold(clf.model_.flat_params)
