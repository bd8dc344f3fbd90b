"""distbp's estimators beside scikit-learn's from the same parameters, for the tests that hold the two to the
same steps (alpha, shuffle=False, sample weights, learning-rate schedules). Import after
`pytest.importorskip("sklearn")`."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import neural_network
from sklearn.exceptions import ConvergenceWarning

from distbp.sklearn import MLPClassifier, MLPRegressor

SCIKIT_LEARN = {MLPClassifier: neural_network.MLPClassifier, MLPRegressor: neural_network.MLPRegressor}


def flat(estimator) -> np.ndarray:
    """coefs_ then intercepts_, as one float64 vector (any estimator with scikit-learn's attributes)."""
    return np.concatenate([a.ravel() for a in estimator.coefs_ + estimator.intercepts_]).astype(np.float64)


def from_the_same_start(cls, X, y, epochs: int, sample_weight=None, **params):
    """(ours, scikit-learn's), each fitted `epochs` more epochs of sgd from the same parameters.

    Both are fitted once first (their shapes and labels), then scikit-learn's takes ours' parameters, and both
    go on with warm_start (which starts a new optimizer in both), with `sample_weight` if given. params override
    the defaults: 7 tanh units, sgd, learning_rate_init 0.1; distbp's momentum is heavy-ball, so scikit-learn's
    runs with nesterovs_momentum=False."""
    common = dict(hidden_layer_sizes=(7,), activation="tanh", solver="sgd", learning_rate_init=0.1, warm_start=True,
                  random_state=0, max_iter=1)
    common.update(params)
    ours = cls(dtype="float64", **common)
    theirs = SCIKIT_LEARN[cls](nesterovs_momentum=False, **common)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
        theirs.coefs_ = [W.copy() for W in ours.coefs_]
        theirs.intercepts_ = [b.copy() for b in ours.intercepts_]
        start = flat(ours)
        ours.set_params(max_iter=epochs).fit(X, y, sample_weight=sample_weight)
        theirs.set_params(max_iter=epochs).fit(X, y, sample_weight=sample_weight)
    assert not np.array_equal(flat(ours), start)  # it trained
    return ours, theirs
