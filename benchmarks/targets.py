"""Issue 28's accuracy figures, side by side with scikit-learn at the same budget (table and JSON).

    .venv/bin/python benchmarks/targets.py [--json results/targets.json]

- regression: diabetes (1 target) and linnerud (3), held-out 25 %, scikit-learn's MLPRegressor defaults but
  tanh (100 units, adam 1e-3, batch min(200, rows), alpha 1e-4, 50 epochs), targets standardized on both sides
  (distbp: scale_targets="standardize"; scikit-learn: TransformedTargetRegressor), R² over seeds 0, 1, 2;
- multilabel: digits with three labels per image (even, > 4, prime), 128 relu units, 60 epochs,
  distbp.sklearn.MLPClassifier against scikit-learn's, Hamming and subset accuracy;
- the textbook network: σ hidden layer, σ output, squared error (64-30-10, batch 10, η 0.5 on the mean),
  digits, 10 epochs, held-out accuracy.
One process, one thread.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402
from benchmarks.common import machine, print_table, write_json  # noqa: E402

SEEDS = (0, 1, 2)


def regression_rows() -> list[dict]:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.datasets import load_diabetes, load_linnerud
    from sklearn.metrics import r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for name, loader in (("diabetes", load_diabetes), ("linnerud", load_linnerud)):
        data = loader()
        X, Y = data.data, data.target.reshape(len(data.data), -1)
        X_tr, X_te, Y_tr, Y_te = train_test_split(X, Y, test_size=0.25, random_state=0)
        ours, theirs = [], []
        for seed in SEEDS:
            model = distbp.MLP([X.shape[1], 100, Y.shape[1]], activation="tanh", loss="mse", dtype="float64",
                               seed=seed)
            distbp.fit(model, X_tr, Y_tr, epochs=50, batch_size=min(200, len(X_tr)), lr=1e-3, lr_scale="mean",
                       optimizer="adam", l2=1e-4, scale_targets="standardize", seed=seed, verbose=False, threads=1)
            ours.append(r2_score(Y_te, model.predict(X_te)))
            sk = TransformedTargetRegressor(
                make_pipeline(StandardScaler(), MLPRegressor(activation="tanh", max_iter=50, random_state=seed)),
                transformer=StandardScaler())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sk.fit(X_tr, Y_tr if Y.shape[1] > 1 else Y_tr.ravel())
            theirs.append(r2_score(Y_te, sk.predict(X_te).reshape(len(X_te), -1)))
        rows.append({"case": f"{name} R²", "distbp": float(np.mean(ours)), "scikit-learn": float(np.mean(theirs))})
    return rows


def multilabel_rows() -> list[dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier as SklearnMLP
    from sklearn.preprocessing import StandardScaler

    from distbp.sklearn import MLPClassifier

    digits = load_digits()
    t = digits.target
    Y = np.stack([t % 2 == 0, t > 4, np.isin(t, [2, 3, 5, 7])], axis=1).astype(np.int64)
    X_tr, X_te, Y_tr, Y_te = train_test_split(StandardScaler().fit_transform(digits.data), Y, test_size=0.25,
                                              random_state=0)
    scores = {}
    for name, cls in (("distbp", MLPClassifier), ("scikit-learn", SklearnMLP)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = cls(hidden_layer_sizes=(128,), max_iter=60, random_state=0).fit(X_tr, Y_tr)
        P = model.predict(X_te)
        scores[name] = ((P == Y_te).mean(), (P == Y_te).all(axis=1).mean())
    return [{"case": "digits multilabel Hamming", "distbp": scores["distbp"][0],
             "scikit-learn": scores["scikit-learn"][0]},
            {"case": "digits multilabel subset", "distbp": scores["distbp"][1],
             "scikit-learn": scores["scikit-learn"][1]}]


def textbook_row() -> dict:
    model = distbp.MLP([64, 30, 10], activation="sigmoid", loss="mse", output_activation="sigmoid", seed=0)
    history = distbp.fit(model, data="digits", epochs=10, batch_size=10, lr=0.5, lr_scale="mean",
                         test_fraction=0.1, verbose=False, threads=1)
    return {"case": "textbook σ/σ/mse digits accuracy", "distbp": history[-1]["test_accuracy"],
            "scikit-learn": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="results/targets.json")
    args = parser.parse_args()
    rows = [*regression_rows(), *multilabel_rows(), textbook_row()]
    print_table(rows, ["case", "distbp", "scikit-learn"], "held-out scores, same budget on both sides")
    write_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
