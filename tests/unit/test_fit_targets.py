"""distbp.fit takes the targets users have: class names (kept in model.classes, mapped alike by a later fit),
a multilabel 0/1 matrix for binary cross-entropy, and regression targets that it may standardize, with
model.predict and model files giving the targets' own units back."""

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris

import distbp
from distbp.errors import ConfigError, DistbpError

QUIET = dict(verbose=False, threads=1, optimizer="adam", lr_scale="mean")


def test_class_names_train_and_come_back_through_model_classes(tmp_path):
    iris = load_iris()
    X, names = iris.data, iris.target_names[iris.target]
    model = distbp.MLP([4, 16, 3], activation="tanh", seed=0)
    history = distbp.fit(model, X, names, validation=0.2, epochs=40, batch_size=16, lr=0.01, **QUIET)
    assert model.classes.tolist() == ["setosa", "versicolor", "virginica"]
    assert history[-1]["test_accuracy"] >= 0.9
    predicted = model.classes[model.predict(X).argmax(axis=1)]
    assert np.mean(predicted == names) >= 0.9
    model.save(tmp_path / "m.npz")
    assert distbp.load(tmp_path / "m.npz").classes.tolist() == model.classes.tolist()
    # a later fit on rows that lack a class maps its labels through the model's classes, not its own set
    before = model.flat_params.copy()
    distbp.fit(model, X[names != "setosa"], names[names != "setosa"], epochs=1, batch_size=16, lr=0.01, **QUIET)
    assert not np.array_equal(before, model.flat_params)
    with pytest.raises(DistbpError, match="'daisy'.*not one of the model's classes"):
        distbp.fit(model, X[:3], np.array(["setosa", "daisy", "setosa"]), epochs=1, **QUIET)


def test_a_multilabel_matrix_trains_sigmoid_outputs_with_binary_cross_entropy():
    iris = load_iris()
    Y = np.stack([iris.target == 0, iris.target == 2], axis=1).astype(np.int64)
    model = distbp.MLP([4, 8, 2], activation="tanh", loss="binary_cross_entropy", seed=0)
    history = distbp.fit(model, iris.data, Y, validation=0.2, epochs=60, batch_size=16, lr=0.01, **QUIET)
    assert history[-1]["test_accuracy"] >= 0.9  # Hamming
    assert history[-1]["test_subset_accuracy"] <= history[-1]["test_accuracy"]
    with pytest.raises(DistbpError, match="must be 0 or 1"):
        distbp.fit(model, iris.data, 2 * Y, epochs=1, **QUIET)


def test_standardized_regression_targets_predict_in_their_own_units(tmp_path):
    diabetes = load_diabetes()
    X, y = diabetes.data, diabetes.target.reshape(-1, 1)
    model = distbp.MLP([10, 32, 1], activation="tanh", loss="mse", dtype="float64", seed=0)
    history = distbp.fit(model, X, y, validation=0.2, epochs=60, batch_size=32, lr=0.003, scale_targets="standardize",
                         **QUIET)
    assert model.target_offset[0] == pytest.approx(np.mean(y), rel=0.05)  # the training rows' mean
    assert model.target_factor[0] == pytest.approx(1 / np.std(y), rel=0.1)
    assert history[-1]["test_r2"] > 0.2 and history[-1]["test_rmse"] < np.std(y)
    predicted = model.predict(X)
    assert abs(predicted.mean() - y.mean()) < 0.2 * y.std()  # in the targets' units, not standardized ones
    model.save(tmp_path / "m.npz")
    assert distbp.load(tmp_path / "m.npz").predict(X).tobytes() == predicted.tobytes()
    with pytest.raises(ConfigError, match="scale_targets standardize.*needs loss mse"):
        distbp.fit(distbp.MLP([10, 4, 3]), X, np.zeros(len(X), np.int64), scale_targets="standardize", **QUIET)
