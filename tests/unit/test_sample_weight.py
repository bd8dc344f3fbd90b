"""Per-row weights in the seed's sum, L = Σₙ wₙ lⁿ: ∂L/∂θ = Σₙ wₙ ∂lⁿ/∂θ, a row of weight k counts as k copies
of it, a row of weight 0 as no row; with lr_scale="mean" the step divides by the batch's Σ wₙ; the records are
weighted means and say so; bad weights are one clear error."""

import numpy as np
import pytest

import distbp
from distbp.api import row_weights
from distbp.comm.serial import SerialComm
from distbp.errors import ConfigError

FEATURES, CLASSES = 5, 3


def rows(n: int = 24, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, FEATURES))
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.8)


def model(loss: str = "cross_entropy", outputs: int = CLASSES):
    return distbp.MLP([FEATURES, 6, outputs], activation="tanh", loss=loss, dtype="float64", seed=3)


# full batches in stored order: the same steps whatever the rows' order, so duplicated rows can stand in
FULL = dict(optimizer="gd", lr=0.05, seed=2, scale="none", shuffle=False, timeout=0, comm=SerialComm(),
            verbose=False)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_the_weighted_gradient_is_the_weighted_sum_of_the_rows_gradients(loss):
    X, y = rows()
    m = model(loss, CLASSES if loss == "cross_entropy" else 2)
    if loss == "mse":
        y = np.random.default_rng(5).standard_normal((len(X), 2))
    w = np.random.default_rng(6).uniform(0, 3, len(X))
    grad = np.zeros(m.n_params)
    L = m.loss_and_grad_into(X, y, grad, w=w)
    one, expected, total = np.zeros(m.n_params), np.zeros(m.n_params), 0.0
    for n in range(len(X)):  # the twin: each row alone, weighted by hand
        total += w[n] * m.loss_and_grad_into(X[n:n + 1], y[n:n + 1], one)
        expected += w[n] * one
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-14)
    assert L == pytest.approx(total, rel=1e-12)
    m.loss_and_grad_into(X, y, grad)
    assert np.abs(grad - expected).max() > 1e-3  # the control: unweighted differs


@pytest.mark.parametrize("lr_scale", ["sum", "mean"])
def test_a_row_of_weight_k_trains_as_k_copies_of_it(lr_scale):
    X, y = rows()
    k = np.random.default_rng(7).integers(1, 4, len(X))
    weighted, copies = model(), model()
    distbp.fit(weighted, X, y, sample_weight=k, epochs=3, batch_size=len(X), lr_scale=lr_scale, **FULL)
    distbp.fit(copies, np.repeat(X, k, axis=0), np.repeat(y, k), epochs=3, batch_size=int(k.sum()),
               lr_scale=lr_scale, **FULL)
    np.testing.assert_allclose(weighted.flat_params, copies.flat_params, rtol=1e-11, atol=1e-13)


def test_a_row_of_weight_zero_is_no_row_and_the_records_are_weighted_means():
    X, y = rows()
    w = np.ones(len(X))
    w[::3] = 0
    weighted, fewer = model(), model()
    got = distbp.fit(weighted, X, y, sample_weight=w, epochs=2, batch_size=len(X), lr_scale="mean", **FULL)
    kept = w > 0
    want = distbp.fit(fewer, X[kept], y[kept], epochs=2, batch_size=int(kept.sum()), lr_scale="mean", **FULL)
    np.testing.assert_allclose(weighted.flat_params, fewer.flat_params, rtol=1e-11, atol=1e-13)
    for a, b in zip(got, want):
        assert a["weighted"] is True and b["weighted"] is False
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-11)
        assert a["train_accuracy"] == pytest.approx(b["train_accuracy"], rel=1e-12)


def test_held_out_rows_keep_their_weights():
    X, y = rows(40)
    w = np.random.default_rng(8).uniform(0.5, 2, 40)
    m = model()
    history = distbp.fit(m, X[:30], y[:30], validation=(X[30:], y[30:], w[30:]), sample_weight=w[:30], epochs=1,
                         batch_size=10, **FULL)
    # the held-out loss is the trained model's weighted mean over the 10 held-out rows
    losses = np.array([m.loss_and_grad(X[n:n + 1], y[n:n + 1])[0] for n in range(30, 40)])
    assert history[0]["test_loss"] == pytest.approx((w[30:] * losses).sum() / w[30:].sum(), rel=1e-12)


def test_balanced_class_weights_are_scikit_learns():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    w = row_weights(y, None, "balanced")
    counts = np.bincount(y)
    np.testing.assert_allclose(w, len(y) / (3 * counts[y]))
    np.testing.assert_allclose(row_weights(y, np.full(12, 2.0), {1: 5.0}), np.where(y == 1, 10.0, 2.0))
    from sklearn.utils.class_weight import compute_sample_weight
    np.testing.assert_allclose(w, compute_sample_weight("balanced", y))


def test_accumulation_and_the_exact_mode_take_the_weights_too():
    X, y = rows(30)
    w = np.random.default_rng(9).uniform(0, 2, 30)
    options = dict(FULL, shuffle=True, epochs=2, batch_size=10, lr_scale="mean")
    plain, accumulated, exact = model(), model(), model()
    distbp.fit(plain, X, y, sample_weight=w, **options)
    distbp.fit(accumulated, X, y, sample_weight=w, accumulate=3, **options)
    distbp.fit(exact, X, y, sample_weight=w, reproducible=True, micro_batch=4, **options)
    np.testing.assert_allclose(accumulated.flat_params, plain.flat_params, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(exact.flat_params, plain.flat_params, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("w, words", [
    (np.r_[1.0, -1.0, np.ones(22)], "weights must be finite and >= 0; row 1 has -1.0"),
    (np.r_[np.nan, np.ones(23)], "row 0 has nan"),
    (np.ones(23), r"one weight per row \(24,\)"),
    (np.ones((24, 1)), r"one weight per row \(24,\)"),
    (5.0, "sample_weight must be an array"),
])
def test_bad_weights_are_one_clear_error(w, words):
    X, y = rows()
    with pytest.raises(ConfigError, match=words):
        distbp.fit(model(), X, y, sample_weight=w, epochs=1, **FULL)


def test_class_weights_need_class_labels_that_y_holds():
    X, y = rows()
    with pytest.raises(ConfigError, match=r"names label\(s\) \[7\] that y does not hold"):
        distbp.fit(model(), X, y, class_weight={7: 2.0}, epochs=1, **FULL)
    with pytest.raises(ConfigError, match="integer class labels"):
        distbp.fit(model("mse", 2), X, np.zeros((24, 2)), class_weight="balanced", epochs=1, **FULL)
    with pytest.raises(ConfigError, match='"balanced" or a dict'):
        distbp.fit(model(), X, y, class_weight="even", epochs=1, **FULL)


def write_csv(path, X, y, w):
    columns = [f"f{i}" for i in range(X.shape[1])]
    with open(path, "w") as f:
        f.write(",".join(["wt", *columns, "label"]) + "\n")  # the weight column first: any column may be it
        for xs, label, weight in zip(X, y, w):
            f.write(",".join([repr(float(weight)), *map(repr, map(float, xs)), str(int(label))]) + "\n")


SPEC = dict(FULL, shuffle=True, epochs=2, batch_size=7, lr_scale="mean", test_fraction=0.0)


@pytest.mark.parametrize("form", ["csv", "npz", "folder"])
def test_files_bring_their_rows_weights(tmp_path, form):
    X, y = rows()
    w = np.random.default_rng(11).uniform(0, 2, len(X))
    options = {}
    if form == "csv":
        path = tmp_path / "d.csv"
        write_csv(path, X, y, w)
        options["weights"] = "wt"
    elif form == "npz":
        path = tmp_path / "d.npz"
        np.savez(path, X=X, y=y, w=w)
    else:
        path = tmp_path / "d"
        path.mkdir()
        for name, a in (("X", X), ("y", y), ("w", w)):
            np.save(path / f"{name}.npy", a)
    from_file, from_arrays = model(), model()
    history = distbp.fit(from_file, data=str(path), **SPEC, **options)
    distbp.fit(from_arrays, X, y, sample_weight=w, **{k: v for k, v in SPEC.items() if k != "test_fraction"})
    np.testing.assert_allclose(from_file.flat_params, from_arrays.flat_params, rtol=1e-12, atol=1e-14)
    assert history[-1]["weighted"] is True


def test_a_weights_column_that_is_missing_or_the_label_or_not_a_csv_is_refused(tmp_path):
    X, y = rows()
    write_csv(tmp_path / "d.csv", X, y, np.ones(len(X)))
    with pytest.raises(distbp.DistbpError, match=r"no column 'weight' for the weights; its columns are wt, f0"):
        distbp.fit(model(), data=str(tmp_path / "d.csv"), weights="weight", **SPEC)
    with pytest.raises(distbp.DistbpError, match="is the label column"):
        distbp.fit(model(), data=str(tmp_path / "d.csv"), weights="label", **SPEC)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(distbp.DistbpError, match="an .npz holds its rows' weights as a member w"):
        distbp.fit(model(), data=str(tmp_path / "d.npz"), weights="wt", **SPEC)


def test_a_weighted_run_resumes_mid_epoch_bit_exactly(tmp_path):
    X, y = rows(40)
    w = np.random.default_rng(12).uniform(0, 2, 40)
    options = dict(FULL, shuffle=True, epochs=3, batch_size=6, optimizer="adam", lr=0.01, lr_scale="mean")
    whole = model()
    want = distbp.fit(whole, X, y, sample_weight=w, **options)
    first = model()
    distbp.fit(first, X, y, sample_weight=w, checkpoint_dir=str(tmp_path), callback_every=1,
               callback=lambda r: r.get("step") == 10, **options)
    resumed, ran = model(), []
    got = distbp.fit(resumed, X, y, sample_weight=w, checkpoint_dir=str(tmp_path), resume=True, callback_every=1,
                     callback=lambda r: ran.append(r.get("step")), **options)
    assert ran[0] == 11  # it went on after step 10 (7 steps an epoch), not from the start
    assert resumed.flat_params.tobytes() == whole.flat_params.tobytes()
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in want]  # the epoch's Σ wₙ came back too


def test_the_command_line_takes_weights_no_shuffle_l2_and_dropout_together(tmp_path):
    import os
    import subprocess
    import sys

    X, y = rows(80)
    write_csv(tmp_path / "d.csv", X, y, np.random.default_rng(13).uniform(0, 2, 80))
    done = subprocess.run([sys.executable, "-m", "distbp", "train", "--data", str(tmp_path / "d.csv"), "--weights",
                           "wt", "--layers", "5,8,6,3", "--dropout", "0.2", "--no-shuffle", "--l2", "0.01",
                           "--optimizer", "momentum", "--epochs", "2", "--batch-size", "16", "--progress", "none",
                           "--metrics", str(tmp_path / "m.jsonl")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, DISTBP_THREADS="1"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("(weighted)") == 2, done.stdout  # one epoch line each, marked
    import json
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["weighted"] for r in records] == [True, True]
