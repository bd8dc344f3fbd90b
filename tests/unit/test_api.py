"""distbp.fit: training from Python with the command line's configuration, checks and results.

The same script under MPI is tested in test_api_mpi.py; here everything runs in one process.
"""

import json

import numpy as np
import pytest
from jobs import load_npz, run_job

import distbp
from distbp.comm.serial import SerialComm

LAYERS = [12, 10, 3]


def blobs(rows: int, seed: int = 0, features: int = 12, classes: int = 3, offset: float = 5.0):
    """Separable-ish float32 rows with a large common offset (so that feature scaling matters); the class
    centres are the same for every seed, the rows are the seed's."""
    centres = np.random.default_rng(99).standard_normal((classes, features)) * 2
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, rows)
    X = (centres[y] + rng.standard_normal((rows, features)) + offset).astype(np.float32)
    return X, y


def model_for(sizes=LAYERS, **kw) -> distbp.MLP:
    return distbp.MLP(sizes, activation=kw.pop("activation", "tanh"), dtype=kw.pop("dtype", "float64"),
                      seed=kw.pop("seed", 4))


OPTIONS = dict(epochs=2, batch_size=16, optimizer="adam", lr=0.01, lr_scale="mean", seed=4, threads=1)


def test_fit_from_python_saves_the_bytes_distbp_train_saves(tmp_path):
    X, y = blobs(300)
    Xt, yt = blobs(60, seed=1)
    np.savez(tmp_path / "d.npz", X=X, y=y, X_test=Xt, y_test=yt)
    done = run_job(1, ["distbp", "train", "--data", str(tmp_path / "d.npz"), "--layers", "12,10,3",
                       "--activation", "tanh", "--dtype", "float64", "--epochs", "2", "--batch-size", "16",
                       "--optimizer", "adam", "--lr", "0.01", "--lr-scale", "mean", "--seed", "4",
                       "--progress", "none", "--save", str(tmp_path / "cli.npz"),
                       "--metrics", str(tmp_path / "m.jsonl")])
    assert done.returncode == 0, done.output
    model = model_for()
    history = distbp.fit(model, X, y, validation=(Xt, yt), verbose=False, **OPTIONS)
    saved = load_npz(tmp_path / "cli.npz")
    for l, (W, b) in enumerate(model.params):
        assert W.tobytes() == saved[f"W{l}"].tobytes()
        assert b.tobytes() == saved[f"b{l}"].tobytes()
    cli_records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    same = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "steps")
    assert [{k: r[k] for k in same} for r in history] == [{k: r[k] for k in same} for r in cli_records]


def test_fit_trains_the_model_in_place_and_predict_takes_raw_rows():
    X, y = blobs(400)
    Xt, yt = blobs(100, seed=1)
    model = model_for()
    before = model.flat_params.copy()
    history = distbp.fit(model, X, y, validation=(Xt, yt), verbose=False, **{**OPTIONS, "epochs": 4})
    assert not np.array_equal(model.flat_params, before)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    # the held-out accuracy of the last epoch is what the model predicts on the raw held-out rows
    predicted = model.predict(Xt).argmax(axis=1)
    assert history[-1]["test_accuracy"] == pytest.approx(np.mean(predicted == yt), abs=1e-12)
    assert history[-1]["test_accuracy"] > 0.8
    assert model.feature_offset == pytest.approx(X.mean(axis=0), rel=1e-6)  # the training's scaling


def test_the_history_is_the_metrics_file(tmp_path):
    X, y = blobs(200)
    model = model_for()
    history = distbp.fit(model, X, y, validation=0.2, metrics=str(tmp_path / "m.jsonl"), verbose=False, **OPTIONS)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.dumps(r) for r in history] == lines
    assert history[0]["test_accuracy"] is not None  # the fraction was held out


def test_a_callback_sees_every_epoch_and_can_stop_training():
    X, y = blobs(200)
    seen = []
    history = distbp.fit(model_for(), X, y, verbose=False, callback=lambda r: seen.append(r) or r["epoch"] == 2,
                         **{**OPTIONS, "epochs": 5})
    assert [r["epoch"] for r in seen] == [1, 2]
    assert history == seen


def test_a_step_callback_runs_every_n_steps():
    X, y = blobs(160)  # 10 steps of 16 rows per epoch
    steps = []
    distbp.fit(model_for(), X, y, verbose=False, callback=lambda r: steps.append(r.get("step")),
               callback_every=3, **OPTIONS)
    # global steps 3, 6, 9, the epoch's record (no "step"), then 12, 15, 18 and the second epoch's record
    assert steps == [3, 6, 9, None, 12, 15, 18, None]


def test_a_step_callback_stops_mid_epoch_and_resume_continues_it_exactly(tmp_path):
    X, y = blobs(160)
    whole = model_for()
    distbp.fit(whole, X, y, verbose=False, **{**OPTIONS, "epochs": 3})
    first = model_for()
    distbp.fit(first, X, y, verbose=False, checkpoint_dir=str(tmp_path / "ck"), callback_every=5,
               callback=lambda r: r.get("step") == 15, **{**OPTIONS, "epochs": 3})
    resumed = model_for()
    ran = []  # what the resumed call trains: each step's record, and each epoch's (which has no "step")
    history = distbp.fit(resumed, X, y, verbose=False, checkpoint_dir=str(tmp_path / "ck"), resume=True,
                         callback=lambda r: ran.append(r.get("step")), callback_every=1, **{**OPTIONS, "epochs": 3})
    # it went on after step 15 (10 steps an epoch): steps 16-19, epoch 2's end, steps 21-29, epoch 3's end
    assert ran == [16, 17, 18, 19, None, *range(21, 30), None]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert resumed.flat_params.tobytes() == whole.flat_params.tobytes()


def test_verbose_false_prints_nothing(capfd):
    X, y = blobs(100)
    distbp.fit(model_for(), X, y, verbose=False, **OPTIONS)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_the_root_prints_the_header_and_one_line_per_epoch(capfd):
    X, y = blobs(100)
    distbp.fit(model_for(), X, y, progress="none", **OPTIONS)
    out = capfd.readouterr().out
    assert "data arrays: 100 train rows" in out
    assert sum(line.startswith("epoch") for line in out.splitlines()) == 2


def test_a_data_spec_trains_like_the_command_line():
    model = distbp.MLP([10, 8, 3], dtype="float64", seed=2)
    history = distbp.fit(model, data="synthetic:rows=200,features=10,classes=3", verbose=False,
                         **{**OPTIONS, "seed": 2})
    assert history[-1]["test_accuracy"] is not None  # the spec's test fraction is held out


@pytest.mark.parametrize("call, words", [
    (lambda m, X, y: distbp.fit(m, X, y, epoch=3), "unknown option(s) epoch"),
    (lambda m, X, y: distbp.fit(m, X, y, layers=[12, 3]), "set by the model"),
    (lambda m, X, y: distbp.fit(m, X, y, epochs=0), "epochs must be positive"),
    (lambda m, X, y: distbp.fit(m, X, y, lr="fast"), "is not a number"),
    (lambda m, X, y: distbp.fit(m, X), "X needs y"),
    (lambda m, X, y: distbp.fit(m, X, y, data="digits"), "not both"),
    (lambda m, X, y: distbp.fit(m, X[:, :5], y), "starts with 12 inputs"),
    (lambda m, X, y: distbp.fit(m, X, y[:-1]), "rows"),
    (lambda m, X, y: distbp.fit(m, X, y, local_rows=True, reproducible=True), "local_rows conflicts with reproducible"),
    (lambda m, X, y: distbp.fit("model", X, y), "distbp.MLP"),
])
def test_bad_arguments_are_one_clear_error(call, words):
    X, y = blobs(50)
    with pytest.raises(distbp.DistbpError, match=None) as info:
        call(model_for(), X, y)
    assert words in str(info.value)


def test_nan_in_the_rows_is_a_clear_error_and_the_model_is_unchanged():
    X, y = blobs(50)
    X[7, 3] = np.nan
    model = model_for()
    before = model.flat_params.copy()
    with pytest.raises(distbp.DistbpError, match="NaN or Inf"):
        distbp.fit(model, X, y, verbose=False, **OPTIONS)
    assert np.array_equal(model.flat_params, before)


def test_local_rows_on_one_rank_are_all_the_rows():
    # one rank holding "its own" rows holds them all: one dataset, ceil(N/B) steps an epoch
    X, y = blobs(100)
    history = distbp.fit(model_for(), X, y, local_rows=True, verbose=False, comm=SerialComm(), **OPTIONS)
    assert history[-1]["steps"] == 2 * 7


def test_the_command_line_loads_each_ranks_own_part_with_local_rows(tmp_path):
    for rank, rows in enumerate((90, 150)):
        X, y = blobs(rows, seed=rank)
        np.savez(tmp_path / f"part{rank}.npz", X=X, y=y)
    done = run_job(2, ["distbp", "train", "--data", str(tmp_path / "part{rank}.npz"), "--local-rows",
                       "--layers", "12,10,3", "--epochs", "1", "--batch-size", "16", "--progress", "none"])
    assert done.returncode == 0, done.output
    # 9 + 15 training rows held out of 90 + 150: 216 train rows over both ranks, ceil(216 / 16) steps
    assert "216 train, 24 test rows (each rank its own)" in done.stdout
    assert done.stdout.count("epoch   1") == 1


def test_a_rank_without_its_part_stops_the_job_naming_the_file(tmp_path):
    X, y = blobs(90)
    np.savez(tmp_path / "part0.npz", X=X, y=y)
    done = run_job(2, ["distbp", "train", "--data", str(tmp_path / "part{rank}.npz"), "--local-rows",
                       "--layers", "12,10,3", "--epochs", "1", "--progress", "none"])
    assert done.returncode == 2, done.output
    assert "rank 1" in done.stderr and "part1.npz" in done.stderr


# ---- Python inputs: NumPy numbers, ValueErrors, the arguments' own errors ---------------------------------

def test_numpy_scalars_are_numbers_and_train_like_python_ones():
    X, y = blobs(120)
    plain = distbp.fit(model_for(), X, y, verbose=False, validation=0.25, **OPTIONS)
    numpy_options = dict(epochs=np.int64(2), batch_size=np.int32(16), optimizer=np.str_("adam"), lr=np.float64(0.01),
                         lr_scale="mean", seed=np.uint8(4), threads=np.int64(1))
    model = model_for()
    numpy = distbp.fit(model, X, y, verbose=False, validation=np.float32(0.25), callback_every=np.int64(3),
                       callback=lambda r: np.bool_(False), **numpy_options)
    assert [r["train_loss"] for r in numpy] == [r["train_loss"] for r in plain]


def test_numpy_values_become_python_values_in_the_configuration():
    from distbp.config import from_values

    cfg = from_values({"epochs": np.int64(3), "lr": np.float32(0.01), "layers": np.array([4, 8, 2]),
                       "lr_schedule": "step", "lr_milestones": (np.int16(1), np.int16(2)),
                       "overlap": np.False_, "activation": np.str_("relu")}, "test")
    assert (type(cfg.epochs), type(cfg.lr), type(cfg.overlap), type(cfg.activation)) == (int, float, bool, str)
    assert cfg.lr == float(np.float32(0.01))
    assert cfg.layers == [4, 8, 2] and all(type(s) is int for s in cfg.layers + cfg.lr_milestones)
    json.dumps(cfg.to_dict())  # stored in checkpoints and compared across ranks as JSON


@pytest.mark.parametrize("options, words", [
    (dict(epochs=True), "epochs = True is not an integer"),
    (dict(epochs=np.True_), "epochs = True is not an integer"),
    (dict(batch_size=np.float64(16.0)), "batch_size = 16.0 is not an integer"),
    (dict(lr=np.bool_(True)), "lr = True is not a number"),
    (dict(overlap=1), "overlap = 1 is not true or false"),
])
def test_bools_and_numbers_stay_apart(options, words):
    X, y = blobs(50)
    with pytest.raises(distbp.ConfigError) as info:
        distbp.fit(model_for(), X, y, verbose=False, **{**OPTIONS, **options})
    assert words in str(info.value)


def test_a_bad_option_is_a_value_error_too():
    X, y = blobs(50)
    assert issubclass(distbp.ConfigError, ValueError) and issubclass(distbp.ConfigError, distbp.DistbpError)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        distbp.fit(model_for(), X, y, verbose=False, **{**OPTIONS, "lr": float("inf")})


@pytest.mark.parametrize("call, words", [
    (lambda m, X, y: distbp.fit(m, X, 5), "y must be an array of labels (rows,) or targets (rows, k), got an int"),
    (lambda m, X, y: distbp.fit(m, 3.0, y), "X must be an array (rows, features), got a float"),
    (lambda m, X, y: distbp.fit(m, X, y, validation=(X, 7)), "validation's y_val must be an array"),
    (lambda m, X, y: distbp.fit(m, [[1.0, 2.0], [3.0]], y), "X is not an array"),
    (lambda m, X, y: distbp.fit(m, None, y), "y needs X"),
    (lambda m, X, y: distbp.fit(m, X, y, threads=0), "threads must be at least 1, got 0"),
    (lambda m, X, y: distbp.fit(m, X, y, threads=-2), "threads must be at least 1, got -2"),
    (lambda m, X, y: distbp.fit(m, X, y, callback="stop"), "callback must be a function"),
    (lambda m, X, y: distbp.fit(m, X, y, callback_every=True), "callback_every must be a non-negative integer"),
], ids=["y scalar", "X scalar", "y_val scalar", "ragged X", "y without X", "threads 0", "threads -2",
        "callback not callable", "callback_every bool"])
def test_bad_python_inputs_are_one_config_error_naming_the_argument(call, words):
    X, y = blobs(50)
    with pytest.raises(distbp.ConfigError) as info:
        call(model_for(), X, y)
    assert words in str(info.value)
    assert "rank 0" not in str(info.value)  # one process: the error itself


def named_callback(record):
    return np.array([record["epoch"], 1])  # an array: its truth is ambiguous


@pytest.mark.parametrize("every", [0, 2])
def test_a_callback_returning_an_array_stops_with_an_error_naming_it(every):
    X, y = blobs(100)
    model = model_for()
    before = model.flat_params.copy()
    with pytest.raises(distbp.ConfigError) as info:
        distbp.fit(model, X, y, verbose=False, callback=named_callback, callback_every=every, **OPTIONS)
    assert ("callback named_callback returned an ndarray of shape (2,): it must return a bool (True stops "
            "training) or None") in str(info.value)
    assert np.array_equal(model.flat_params, before)  # the failed fit leaves the caller's model as it was


def test_a_callback_returning_numpys_bool_stops_training():
    X, y = blobs(100)
    history = distbp.fit(model_for(), X, y, verbose=False, callback=lambda r: np.bool_(r["epoch"] == 1),
                         **{**OPTIONS, "epochs": 3})
    assert [r["epoch"] for r in history] == [1]
