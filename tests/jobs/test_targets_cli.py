"""The targets users bring, through the command line on 2 ranks, end to end (train, predict, evaluate):
iris as a CSV of species names, diabetes (one target) and linnerud (three) as CSV regressions that reach
scikit-learn's MLPRegressor's held-out R² at the same budget, and a multilabel classifier built from digits."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from jobs import run_job
from sklearn.compose import TransformedTargetRegressor
from sklearn.datasets import load_diabetes, load_digits, load_iris, load_linnerud
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

pytestmark = pytest.mark.timeout(300)

SEEDS = (0, 1, 2)


def distbp(args: list[str], cwd, ranks: int = 2) -> str:
    done = run_job(ranks, ["distbp", *args], cwd=cwd, timeout=150)
    assert done.returncode == 0, done.output
    return done.stdout


def split_csvs(tmp_path, name: str, X: pd.DataFrame, y: pd.DataFrame):
    """train.csv (features and targets), X.csv (held-out features) and the held-out targets."""
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    pd.concat([X_train, y_train], axis=1).to_csv(tmp_path / f"{name}_train.csv", index=False)
    pd.concat([X_test, y_test], axis=1).to_csv(tmp_path / f"{name}_test.csv", index=False)
    X_test.to_csv(tmp_path / f"{name}_X.csv", index=False)
    return X_train, X_test, y_train, y_test


def test_iris_with_species_names_trains_predicts_names_and_evaluates_named_rows(tmp_path):
    iris = load_iris(as_frame=True)
    species = iris.target.map(dict(enumerate(iris.target_names))).rename("species")
    *_, y_test = split_csvs(tmp_path, "iris", iris.data, species)
    distbp(["train", "--data", "iris_train.csv", "--targets", "species", "--activation", "tanh", "--optimizer",
            "adam", "--lr", "0.01", "--lr-scale", "mean", "--batch-size", "16", "--epochs", "60", "--test-fraction",
            "0", "--save", "m.npz", "--progress", "none"], tmp_path)
    distbp(["predict", "--model", "m.npz", "--data", "iris_X.csv", "--output", "labels.csv", "--labels"], tmp_path, 1)
    predicted = (tmp_path / "labels.csv").read_text().split()
    assert set(predicted) <= set(iris.target_names)
    assert np.mean(np.array(predicted) == y_test.to_numpy()) >= 0.9
    report = json.loads(distbp(["evaluate", "--model", "m.npz", "--data", "iris_test.csv", "--targets", "species",
                                "--json"], tmp_path))
    assert report["accuracy"] == pytest.approx(np.mean(np.array(predicted) == y_test.to_numpy()))


def scikit_learn_r2(X_train, X_test, y_train, y_test, epochs: int) -> float:
    """MLPRegressor's held-out R² at the budget distbp gets (its defaults but tanh, targets standardized as
    distbp's --scale-targets standardize does), averaged over SEEDS."""
    scores = []
    for seed in SEEDS:
        model = TransformedTargetRegressor(
            make_pipeline(StandardScaler(), MLPRegressor(activation="tanh", max_iter=epochs, random_state=seed)),
            transformer=StandardScaler())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: the budget is fixed on purpose
            model.fit(X_train, y_train.to_numpy() if y_train.shape[1] > 1 else y_train.to_numpy().ravel())
        scores.append(r2_score(y_test, model.predict(X_test).reshape(len(X_test), -1)))
    return float(np.mean(scores))


@pytest.mark.parametrize("loader,columns", [(load_diabetes, ["target"]), (load_linnerud, ["Weight", "Waist", "Pulse"])],
                         ids=["diabetes, one target", "linnerud, three targets"])
def test_a_csv_regression_reaches_scikit_learn_s_held_out_r2(tmp_path, loader, columns):
    data = loader(as_frame=True)
    targets = data.target if isinstance(data.target, pd.DataFrame) else data.target.to_frame("target")
    assert list(targets.columns) == columns
    X_train, X_test, y_train, y_test = split_csvs(tmp_path, "reg", data.data, targets)
    epochs = 50
    scores = []
    for seed in SEEDS:  # scikit-learn's MLPRegressor defaults: 100 tanh units, adam 1e-3, batch min(200, rows)
        distbp(["train", "--data", "reg_train.csv", "--targets", ",".join(columns), "--loss", "mse",
                "--scale-targets", "standardize", "--layers", f"{X_train.shape[1]},100,{len(columns)}",
                "--activation", "tanh", "--optimizer", "adam", "--lr", "0.001", "--lr-scale", "mean", "--l2", "1e-4",
                "--batch-size", str(min(200, len(X_train))), "--epochs", str(epochs), "--dtype", "float64",
                "--test-fraction", "0", "--seed", str(seed), "--save", "m.npz", "--progress", "none"], tmp_path)
        distbp(["predict", "--model", "m.npz", "--data", "reg_X.csv", "--output", "P.npy"], tmp_path, 1)
        predicted = np.load(tmp_path / "P.npy")
        assert predicted.shape == (len(X_test), len(columns))
        scores.append(r2_score(y_test, predicted))
    theirs = scikit_learn_r2(X_train, X_test, y_train, y_test, epochs)
    print(f"held-out R²: distbp {np.mean(scores):.3f} {np.round(scores, 3)}, scikit-learn {theirs:.3f}")
    assert np.mean(scores) >= theirs - 0.03, (scores, theirs)
    report = json.loads(distbp(["evaluate", "--model", "m.npz", "--data", "reg_test.csv", "--targets",
                                ",".join(columns), "--json"], tmp_path))
    assert report["r2"] == pytest.approx(scores[-1], abs=1e-9)  # the last seed's model, on the same rows
    assert report["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - y_test.to_numpy()) ** 2)), rel=1e-9)


def test_a_multilabel_classifier_from_digits_reaches_95_percent_hamming_accuracy(tmp_path):
    digits = load_digits()
    t = digits.target
    labels = pd.DataFrame({"even": t % 2 == 0, "above4": t > 4, "prime": np.isin(t, [2, 3, 5, 7])}).astype(int)
    features = pd.DataFrame(digits.data, columns=[f"p{i}" for i in range(64)])
    split_csvs(tmp_path, "ml", features, labels)
    out = distbp(["train", "--data", "ml_train.csv", "--targets", "even,above4,prime", "--loss",
                  "binary_cross_entropy", "--layers", "64,128,3", "--activation", "relu", "--optimizer", "adam",
                  "--lr", "0.001", "--lr-scale", "mean", "--batch-size", "64", "--epochs", "40", "--save", "m.npz",
                  "--progress", "lines"], tmp_path)
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(epoch_lines) == 40 and "subset" in epoch_lines[-1]  # the epoch line reports the subset accuracy
    report = json.loads(distbp(["evaluate", "--model", "m.npz", "--data", "ml_test.csv", "--targets",
                                "even,above4,prime", "--json"], tmp_path))
    assert report["accuracy"] >= 0.95 and report["subset_accuracy"] <= report["accuracy"]
    distbp(["predict", "--model", "m.npz", "--data", "ml_X.csv", "--output", "L.npy", "--labels"], tmp_path, 1)
    predicted = np.load(tmp_path / "L.npy")
    held_out = pd.read_csv(tmp_path / "ml_test.csv")[["even", "above4", "prime"]].to_numpy()
    assert predicted.shape == held_out.shape and set(np.unique(predicted)) <= {0, 1}
    assert np.mean(predicted == held_out) == pytest.approx(report["accuracy"])
