"""The estimators take sample_weight as scikit-learn's MLP does (its rule, step for step), and MLPClassifier takes
class_weight: "balanced" makes the minority classes count on class-imbalanced data."""

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is in the test extra")

from sklearn.datasets import load_digits, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

from distbp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from sklearn_twins import flat, from_the_same_start  # noqa: E402

def data_for(cls):
    if cls is MLPClassifier:
        return make_classification(n_samples=150, n_features=6, n_informative=4, n_classes=3, random_state=0)
    X, y = make_regression(n_samples=150, n_features=6, noise=1.0, random_state=0)
    return X, y / y.std()


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_weighted_sgd_takes_scikit_learns_steps_from_the_same_start(cls):
    # stored order, batches of 32 (the last of 22): each step is η·Σₙ wₙ∇lⁿ / Σₙ wₙ over its batch
    X, y = data_for(cls)
    w = np.random.default_rng(3).uniform(0, 3, len(X))
    common = dict(momentum=0.9, batch_size=32, shuffle=False, alpha=0.01)
    ours, theirs = from_the_same_start(cls, X, y, 2, sample_weight=w, **common)
    unweighted, _ = from_the_same_start(cls, X, y, 2, **common)
    assert np.abs(flat(ours) - flat(theirs)).max() < 1e-10
    assert np.abs(flat(unweighted) - flat(theirs)).max() > 1e-4  # the weights moved scikit-learn's too


def test_all_zero_or_negative_weights_are_refused_as_scikit_learn_refuses_them():
    X, y = data_for(MLPClassifier)
    with pytest.raises(ValueError, match="at least one non-zero"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="(?i)negative"):
        MLPClassifier(max_iter=1).fit(X, y, sample_weight=np.r_[-1.0, np.ones(len(X) - 1)])
    with pytest.raises(ValueError, match='class_weight must be None, "balanced" or a dict'):
        MLPClassifier(max_iter=1, class_weight="even").fit(X, y)


def test_balanced_class_weights_raise_the_balanced_accuracy_on_imbalanced_digits():
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    rng = np.random.default_rng(0)
    test = np.zeros(len(y), bool)
    for c in range(10):  # a balanced held-out set: 40 rows of every class
        test[rng.choice(np.flatnonzero(y == c), 40, replace=False)] = True
    # training: every row of classes 0-4, one in ten of classes 5-9
    keep = ~test & ((y < 5) | (rng.random(len(y)) < 0.1))
    params = dict(hidden_layer_sizes=(32,), max_iter=40, random_state=0, dtype="float64", learning_rate_init=0.01)
    scores = {}
    for class_weight in (None, "balanced"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = MLPClassifier(class_weight=class_weight, **params).fit(X[keep], y[keep])
        scores[class_weight] = balanced_accuracy_score(y[test], clf.predict(X[test]))
    assert scores["balanced"] > scores[None] + 0.02, scores
