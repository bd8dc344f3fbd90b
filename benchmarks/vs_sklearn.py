"""distbp.sklearn.MLPClassifier vs sklearn.neural_network.MLPClassifier: the same network, data and epochs.

    .venv/bin/python benchmarks/vs_sklearn.py --epochs 3
    .venv/bin/python benchmarks/vs_sklearn.py --rows 60000 --test 10000 --epochs 5 --repeats 3 --out results/vs.json
    .venv/bin/python benchmarks/vs_sklearn.py --rows 6000 --epochs 2 --repeats 3     # a quick look, a few minutes

Data: distbp's built-in synthetic set (`distbp.data.load_dataset("synthetic:…")`, 784 features, 10
classes, its own held-out rows), standardized with the training rows' mean and std, given to both
libraries as the same float64 arrays (float32 copies for the float32 cases).
Network 784-256-10 (64-128-10 on digits) relu, softmax cross-entropy. Both optimise the same loss with the same update: the
mean loss over the batch, no L2 penalty (scikit-learn alpha=0), a constant learning rate, heavy-ball
momentum for sgd (scikit-learn nesterovs_momentum=False), Adam with the same β₁, β₂, ε. Both run exactly
`--epochs` epochs: n_iter_no_change = epochs, so the stopping rule never fires.

Cases: solver sgd/adam × batch 32/128/512 × float64/float32 × library, one process with all cores (both
libraries' BLAS on every core; distbp's kernels too). The small model joins them (`--small-epochs`, issue 31):
64-128-10 relu on scikit-learn's digits (`distbp.data.load_dataset("digits")`, 20 % held out, standardized the
same way), Adam, batch 32, float64/float32 × library, 20 epochs: the size where per-step work weighs most. scikit-learn computes in float32 when given float32
rows, so it has a float32 case as well. The cases run round-robin (`--repeats` rounds), so load from
other processes falls on all of them alike; the table shows the median fit. Before timing, every case
fits once untimed on a few hundred rows (distbp compiles its kernels on the first call).

Two more cases, each both libraries side by side, float64, Adam:
- streaming (`--stream-chunk`): partial_fit over the training rows in chunks, one call a chunk (the optimizer kept
  between calls by both); the table gives the time per call and the held-out accuracy after one pass;
- weighted: fit with class-imbalanced training rows (classes 5-9 cut to a fifth) and sample_weight from
  scikit-learn's "balanced" rule; the table gives the fit time and the held-out balanced accuracy.

speed-up vs sklearn float64: scikit-learn's float64 fit time of the same solver and batch / this fit's;
vs same dtype: against scikit-learn's fit in this case's dtype. Targets (issue 15): ≥ 1.5 at equal dtype,
≥ 3 for distbp float32 against scikit-learn float64, at equal held-out accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from benchmarks.common import interleaved_times, machine, print_table, write_json  # noqa: E402
from distbp.data.datasets import load_dataset  # noqa: E402
from distbp.host.threads import cores_available  # noqa: E402

HIDDEN = (256,)
SMALL_HIDDEN = (128,)  # the small model: 64-128-10 on digits
SMALL_BATCH = 32
LR = {"sgd": 0.01, "adam": 0.001}
MOMENTUM = 0.9


def load(spec: str, test_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Standardized train and held-out rows of a distbp data set, as float64 and float32 arrays."""
    data = load_dataset(spec, seed=0, scale="none", test_fraction=test_fraction)
    X, X_test = np.asarray(data.train.X, np.float64), np.asarray(data.test.X, np.float64)
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std == 0] = 1
    X, X_test = (X - mean) / std, (X_test - mean) / std
    return {"X64": X, "X32": X.astype(np.float32), "X_test64": X_test, "X_test32": X_test.astype(np.float32),
            "y": data.train.y, "y_test": data.test.y}


def make(library: str, solver: str, batch: int, dtype: str, epochs: int, seed: int, hidden: tuple = HIDDEN):
    """An unfitted classifier of `library` with the benchmark's shared hyperparameters."""
    shared = dict(hidden_layer_sizes=hidden, activation="relu", solver=solver, batch_size=batch,
                  learning_rate_init=LR[solver], momentum=MOMENTUM, max_iter=epochs, n_iter_no_change=epochs,
                  tol=1e-4, shuffle=True, random_state=seed, alpha=0.0)
    if library == "distbp":
        from distbp.sklearn import MLPClassifier
        return MLPClassifier(**shared, dtype=dtype)
    from sklearn.neural_network import MLPClassifier  # computes in the dtype of the rows it is given
    return MLPClassifier(**shared, learning_rate="constant", nesterovs_momentum=False)


def cases(args) -> list[dict]:
    """Every (model, solver, batch, dtype, library), the libraries side by side."""
    big = [{"model": "784-256-10", "solver": s, "batch": b, "dtype": d, "library": lib} for s in ("sgd", "adam")
           for b in args.batches for d in ("float64", "float32") for lib in ("sklearn", "distbp")]
    small = [{"model": "64-128-10", "solver": "adam", "batch": SMALL_BATCH, "dtype": d, "library": lib}
             for d in ("float64", "float32") for lib in ("sklearn", "distbp")]
    return big + (small if args.small_epochs > 0 else [])


def name(case: dict) -> str:
    return f"{case['model']} {case['library']} {case['solver']} batch {case['batch']} {case['dtype']}"


def key(case: dict, library: str, dtype: str) -> tuple:
    """The lookup key of the case like `case` but for `library` and `dtype`."""
    return case["model"], library, case["solver"], case["batch"], dtype


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20000, help="training rows")
    p.add_argument("--test", type=int, default=5000, help="held-out rows")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", default="32,128,512", help="batch sizes of the 784-256-10 cases, comma separated")
    p.add_argument("--small-epochs", type=int, default=20,
                   help="epochs of the small model (64-128-10 on digits, adam, batch 32); 0 leaves it out")
    p.add_argument("--repeats", type=int, default=1, help="round-robin rounds of timed fits (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream-chunk", type=int, default=64, help="rows per partial_fit call in the streaming case")
    p.add_argument("--out", "--json", dest="out", default="results/vs_sklearn.json")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    warnings.filterwarnings("ignore", message=".*Maximum iterations.*")  # both stop at --epochs on purpose

    d = load(f"synthetic:rows={args.rows},features=784,classes=10,test={args.test}")
    data = {"784-256-10": d, "64-128-10": load("digits", test_fraction=0.2) if args.small_epochs > 0 else None}
    hidden = {"784-256-10": HIDDEN, "64-128-10": SMALL_HIDDEN}
    epochs_of = {"784-256-10": args.epochs, "64-128-10": args.small_epochs}
    fitted: dict[str, object] = {}

    def fit_case(case: dict, rows: int | None = None, epochs: int | None = None):
        suffix = "32" if case["dtype"] == "float32" else "64"
        est = make(case["library"], case["solver"], case["batch"], case["dtype"], epochs or epochs_of[case["model"]],
                   args.seed, hidden[case["model"]])
        X, y = data[case["model"]]["X" + suffix], data[case["model"]]["y"]
        if rows is not None:
            X, y = X[:rows], y[:rows]
        return est.fit(X, y)

    all_cases = cases(args)
    for case in all_cases:  # untimed warm-up: distbp compiles (or loads) its kernels for each dtype
        fit_case(case, rows=4 * max(args.batches), epochs=1)

    def timed(case: dict):
        return lambda: fitted.__setitem__(name(case), fit_case(case))

    times = interleaved_times({name(c): timed(c) for c in all_cases}, args.repeats, warmup=0)

    results = []
    for case in all_cases:
        est, seconds = fitted[name(case)], statistics.median(times[name(case)])
        suffix = "32" if case["dtype"] == "float32" else "64"
        dm, epochs = data[case["model"]], epochs_of[case["model"]]
        steps = epochs * -(-len(dm["y"]) // case["batch"])
        results.append({**case, "fit_s": seconds, "fit_s_all": times[name(case)], "epochs": epochs,
                        "train_rows": len(dm["y"]), "samples_per_s": epochs * len(dm["y"]) / seconds,
                        "us_per_step": 1e6 * seconds / steps, "epochs_run": int(est.n_iter_),
                        "test_accuracy": float(est.score(dm["X_test" + suffix], dm["y_test"]))})
    by_key = {key(r, r["library"], r["dtype"]): r for r in results}
    rows = []
    for r in results:
        base64 = by_key[key(r, "sklearn", "float64")]
        same = by_key[key(r, "sklearn", r["dtype"])]
        r["speedup_vs_sklearn_float64"] = base64["fit_s"] / r["fit_s"]
        r["speedup_vs_sklearn_same_dtype"] = same["fit_s"] / r["fit_s"]
        rows.append({"case": name(r), "samples/s": r["samples_per_s"], "µs/step": r["us_per_step"],
                     "fit s": r["fit_s"],
                     "accuracy": f"{100 * r['test_accuracy']:.2f}%",
                     "vs sklearn float64": r["speedup_vs_sklearn_float64"] if r["library"] == "distbp" else None,
                     "vs same dtype": r["speedup_vs_sklearn_same_dtype"] if r["library"] == "distbp" else None})
    small = (f"; 64-128-10: digits, {len(data['64-128-10']['y'])} train rows, {args.small_epochs} epochs"
             if args.small_epochs > 0 else "")
    print_table(rows, ["case", "samples/s", "µs/step", "fit s", "accuracy", "vs sklearn float64", "vs same dtype"],
                title=f"relu MLPs; 784-256-10: {args.rows} train / {args.test} held-out rows, {args.epochs} epochs"
                      f"{small}; {cores_available()} cores, median of {args.repeats}; load avg "
                      f"{os.getloadavg()[0]:.1f}")
    ours = [r for r in results if r["library"] == "distbp"]
    equal = [r["speedup_vs_sklearn_same_dtype"] for r in ours if r["dtype"] == "float64"]
    f32 = [r["speedup_vs_sklearn_float64"] for r in ours if r["dtype"] == "float32"]
    gap = max(abs(r["test_accuracy"] - by_key[key(r, "sklearn", r["dtype"])]["test_accuracy"]) for r in ours)
    print(f"float64 vs float64: {min(equal):.2f}x to {max(equal):.2f}x (target >= 1.5x: "
          f"{'met' if min(equal) >= 1.5 else 'not met'}); distbp float32 vs sklearn float64: {min(f32):.2f}x to "
          f"{max(f32):.2f}x (target >= 3x: {'met' if min(f32) >= 3 else 'not met'}); largest held-out accuracy "
          f"gap {100 * gap:.2f} points")
    extra = {"streaming": streaming(d, args), "weighted": weighted(d, args)}
    import sklearn
    write_json(args.out, {**extra, "benchmark": "vs_sklearn", "layers": [784, *HIDDEN, 10], "rows": args.rows,
                          "test_rows": args.test, "epochs": args.epochs, "repeats": args.repeats,
                          "small_model": {"layers": [64, *SMALL_HIDDEN, 10], "data": "digits, 20 % held out, "
                                          "standardized", "epochs": args.small_epochs, "batch": SMALL_BATCH},
                          "learning_rates": LR, "momentum": MOMENTUM,
                          "data": "distbp synthetic, standardized with the training mean/std",
                          "scikit_learn": sklearn.__version__, "machine": machine(), "results": results})


def streaming(d: dict, args) -> list[dict]:
    """partial_fit over the training rows in chunks of --stream-chunk: seconds per call and held-out accuracy."""
    chunk, rows = args.stream_chunk, min(args.rows, 50 * args.stream_chunk)
    classes = np.unique(d["y"])

    def one_pass(library: str):
        est = make(library, "adam", chunk, "float64", 1, args.seed)
        for start in range(0, rows, chunk):
            est.partial_fit(d["X64"][start:start + chunk], d["y"][start:start + chunk], classes=classes)
        return est

    fitted = {}
    cases_ = {lib: (lambda lib=lib: fitted.__setitem__(lib, one_pass(lib))) for lib in ("sklearn", "distbp")}
    times = interleaved_times(cases_, args.repeats, warmup=1)
    calls = -(-rows // chunk)
    out = [{"library": lib, "calls": calls, "chunk": chunk, "ms_per_call": 1e3 * statistics.median(times[lib]) / calls,
            "test_accuracy": float(fitted[lib].score(d["X_test64"], d["y_test"]))} for lib in ("sklearn", "distbp")]
    base = out[0]["ms_per_call"]
    print_table([{"library": r["library"], "ms per call": r["ms_per_call"], "vs sklearn": base / r["ms_per_call"],
                  "accuracy": f"{100 * r['test_accuracy']:.2f}%"} for r in out],
                ["library", "ms per call", "vs sklearn", "accuracy"],
                title=f"partial_fit streaming: {calls} calls of {chunk} rows, adam, float64, median of {args.repeats}")
    return out


def weighted(d: dict, args) -> list[dict]:
    """fit on class-imbalanced rows with "balanced" sample weights: seconds and held-out balanced accuracy."""
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.utils.class_weight import compute_sample_weight

    rng = np.random.default_rng(args.seed)
    keep = (d["y"] < 5) | (rng.random(len(d["y"])) < 0.2)
    X, y = d["X64"][keep], d["y"][keep]
    w = compute_sample_weight("balanced", y)
    fitted = {}

    def fit(library: str, weights):
        return make(library, "adam", 128, "float64", args.epochs, args.seed).fit(X, y, sample_weight=weights)

    cases_ = {f"{lib} {kind}": (lambda lib=lib, kind=kind: fitted.__setitem__(
        f"{lib} {kind}", fit(lib, w if kind == "weighted" else None)))
        for lib in ("sklearn", "distbp") for kind in ("weighted", "unweighted")}
    times = interleaved_times(cases_, args.repeats, warmup=1)
    out = [{"case": c, "fit_s": statistics.median(times[c]),
            "balanced_accuracy": float(balanced_accuracy_score(d["y_test"], fitted[c].predict(d["X_test64"])))}
           for c in cases_]
    base = {r["case"]: r["fit_s"] for r in out}
    print_table([{"case": r["case"], "fit s": r["fit_s"],
                  "vs sklearn": base[r["case"].replace("distbp", "sklearn")] / r["fit_s"],
                  "balanced accuracy": f"{100 * r['balanced_accuracy']:.2f}%"} for r in out],
                ["case", "fit s", "vs sklearn", "balanced accuracy"],
                title=f"weighted fit: {int(keep.sum())} rows (classes 5-9 cut to a fifth), adam, batch 128, "
                      f"float64, {args.epochs} epochs, median of {args.repeats}")
    return out


if __name__ == "__main__":
    main()
