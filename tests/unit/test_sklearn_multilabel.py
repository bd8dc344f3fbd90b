"""distbp.sklearn.MLPClassifier takes a multilabel y the way scikit-learn's MLPClassifier does: a 0/1 indicator
matrix (n_samples, n_labels) trains σ outputs with binary cross-entropy; predict gives the 0/1 matrix,
predict_proba each label's own probability, score the subset accuracy."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier as SklearnMLP
from sklearn.preprocessing import StandardScaler

from distbp.sklearn import MLPClassifier

pytestmark = pytest.mark.timeout(300)


def digit_labels():
    """Digits with three yes/no labels per image: even, greater than 4, prime."""
    digits = load_digits()
    X, t = StandardScaler().fit_transform(digits.data), digits.target
    Y = np.stack([t % 2 == 0, t > 4, np.isin(t, [2, 3, 5, 7])], axis=1).astype(np.int64)
    return train_test_split(X, Y, test_size=0.25, random_state=0)


def quietly_fit(estimator, X, Y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, Y)


def test_a_multilabel_digits_classifier_reaches_95_percent_hamming_accuracy_like_scikit_learn():
    X_train, X_test, Y_train, Y_test = digit_labels()
    ours = quietly_fit(MLPClassifier(hidden_layer_sizes=(128,), max_iter=60, random_state=0), X_train, Y_train)
    theirs = quietly_fit(SklearnMLP(hidden_layer_sizes=(128,), max_iter=60, random_state=0), X_train, Y_train)
    predicted = ours.predict(X_test)
    assert predicted.shape == Y_test.shape and set(np.unique(predicted)) <= {0, 1}
    hamming = (predicted == Y_test).mean()
    assert hamming >= 0.95
    assert hamming >= (theirs.predict(X_test) == Y_test).mean() - 0.02
    assert ours.score(X_test, Y_test) == pytest.approx((predicted == Y_test).all(axis=1).mean())
    assert (ours.out_activation_, ours.model_.loss.name) == ("logistic", "binary_cross_entropy")
    assert ours.classes_.tolist() == [0, 1, 2] and ours.n_outputs_ == 3


def test_predict_proba_gives_each_label_s_own_probability():
    X_train, X_test, Y_train, _ = digit_labels()
    model = quietly_fit(MLPClassifier(hidden_layer_sizes=(16,), max_iter=3, random_state=0), X_train, Y_train)
    proba = model.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3) and ((proba >= 0) & (proba <= 1)).all()
    assert not np.allclose(proba.sum(axis=1), 1.0)  # no softmax: the labels are independent
    np.testing.assert_array_equal(model.predict(X_test), (proba > 0.5).astype(np.int64))


def test_partial_fit_and_warm_start_keep_the_labels():
    X_train, _, Y_train, _ = digit_labels()
    model = MLPClassifier(hidden_layer_sizes=(8,), random_state=0)
    model.partial_fit(X_train, Y_train, classes=[0, 1, 2])
    model.partial_fit(X_train, Y_train)
    assert model.n_iter_ == 2
    with pytest.raises(ValueError, match="y has 2 labels, the fitted model 3"):
        model.partial_fit(X_train, Y_train[:, :2])
    with pytest.raises(ValueError, match="one label per row"):
        model.partial_fit(X_train, Y_train[:, 0])


def test_what_multilabel_cannot_take_is_one_clear_error():
    X_train, _, Y_train, _ = digit_labels()
    with pytest.raises(ValueError, match="class_weight.*sample_weight"):
        MLPClassifier(class_weight="balanced", max_iter=1).fit(X_train, Y_train)
    with pytest.raises(ValueError, match="not 0/1"):
        MLPClassifier(max_iter=1).fit(X_train, np.stack([Y_train[:, 0], 2 * Y_train[:, 1]], axis=1))


def test_a_column_of_labels_is_one_label_per_row_with_scikit_learn_s_warning():
    X_train, _, Y_train, _ = digit_labels()
    with pytest.warns(DataConversionWarning):
        quietly_fit(MLPClassifier(hidden_layer_sizes=(4,), max_iter=1), X_train, Y_train[:, :1])
