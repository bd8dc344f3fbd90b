"""learning_rate "invscaling" and "adaptive" (with power_t) for solver="sgd", as scikit-learn's MLP has them: from
the same parameters, distbp's estimators take scikit-learn's steps, rate changes and stops included."""


import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")

from sklearn.datasets import make_classification, make_regression  # noqa: E402

import sklearn_twins as twins  # noqa: E402
from distbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn_twins import flat  # noqa: E402

def data_for(cls):
    if cls is MLPClassifier:
        return make_classification(n_samples=120, n_features=6, n_informative=4, n_classes=3, random_state=1)
    X, y = make_regression(n_samples=120, n_features=6, noise=1.0, random_state=1)
    return X, y / y.std()


def from_the_same_start(cls, epochs: int, **params):
    """(ours, scikit-learn's) after `epochs` more epochs of sgd from the same parameters (both warm-started)."""
    X, y = data_for(cls)
    return twins.from_the_same_start(cls, X, y, epochs, **{**dict(learning_rate_init=0.05, momentum=0.9,
                                                                  batch_size=32, shuffle=False, alpha=0.001),
                                                           **params})


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("power_t", [0.5, 0.25])
def test_invscaling_takes_scikit_learns_steps(cls, power_t):
    ours, theirs = from_the_same_start(cls, 4, learning_rate="invscaling", power_t=power_t)
    assert np.abs(flat(ours) - flat(theirs)).max() < 1e-10
    constant, _ = from_the_same_start(cls, 4)
    assert np.abs(flat(constant) - flat(theirs)).max() > 1e-4  # the rate did change


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_adaptive_divides_the_rate_by_five_where_scikit_learn_does(cls):
    # tol so large that no epoch improves: after n_iter_no_change + 1 epochs the rate drops, the count restarts
    ours, theirs = from_the_same_start(cls, 7, learning_rate="adaptive", tol=1e3, n_iter_no_change=1)
    assert len(ours.loss_curve_) - 1 == len(theirs.loss_curve_) - 1  # as many epochs (both curves hold the first)
    assert np.abs(flat(ours) - flat(theirs)).max() < 1e-10
    constant, _ = from_the_same_start(cls, 7, tol=1e3, n_iter_no_change=1)
    assert constant.n_iter_ < ours.n_iter_  # constant stops where adaptive lowers the rate and goes on


def test_invalid_rates_are_value_errors():
    X, y = data_for(MLPClassifier)
    with pytest.raises(ValueError, match="learning_rate"):
        MLPClassifier(learning_rate="cosine", max_iter=1).fit(X, y)
