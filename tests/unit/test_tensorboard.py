"""--tensorboard DIR (tensorboard= in distbp.fit): the records as TensorBoard scalars, read back with
TensorBoard's own reader (EventAccumulator): every epoch's loss, accuracy, held-out scores, rate, speed and
time split at its global step; a resumed run continues the step axis without a step written twice; a bad
folder or a missing tensorboardX is one clear error before training."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import distbp
from distbp.errors import DistbpError

OPTIONS = dict(epochs=4, batch_size=40, lr=0.01, lr_scale="mean", optimizer="adam", seed=3, verbose=False,
               threads=1)


def rows(n: int = 200):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    board = EventAccumulator(str(folder))
    board.Reload()
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def test_every_epoch_s_record_is_a_scalar_at_its_global_step(tmp_path):
    X, y = rows()
    history = distbp.fit(distbp.MLP([5, 8, 3], activation="tanh", seed=1), X, y, validation=0.2,
                         tensorboard=str(tmp_path / "tb"), **OPTIONS)
    seen = scalars(tmp_path / "tb")
    steps = [r["steps"] for r in history]
    assert [s for s, _ in seen["loss/train"]] == steps == [4, 8, 12, 16]  # 160 training rows, batches of 40
    for tag, key in (("loss/train", "train_loss"), ("loss/test", "test_loss"), ("accuracy/test", "test_accuracy"),
                     ("optimizer/lr", "lr"), ("speed/samples_per_s", "samples_per_s"), ("time/compute_s", "compute_s")):
        np.testing.assert_allclose([v for _, v in seen[tag]], [r[key] for r in history], rtol=1e-6)
    assert "regression/test_r2" not in seen  # a classifier has no R²


def test_a_resumed_run_continues_the_step_axis_without_a_step_twice(tmp_path):
    X, y = rows()
    folder, checkpoints = tmp_path / "tb", str(tmp_path / "ck")
    stop_after_two = lambda record: record["epoch"] == 2  # noqa: E731
    distbp.fit(distbp.MLP([5, 8, 3], seed=1), X, y, validation=0.2, tensorboard=str(folder), callback=stop_after_two,
               checkpoint_dir=checkpoints, **OPTIONS)
    assert [s for s, _ in scalars(folder)["loss/train"]] == [4, 8]
    history = distbp.fit(distbp.MLP([5, 8, 3], seed=1), X, y, validation=0.2, tensorboard=str(folder),
                         checkpoint_dir=checkpoints, resume=True, **OPTIONS)
    seen = scalars(folder)["loss/train"]
    assert [s for s, _ in seen] == [4, 8, 12, 16]
    np.testing.assert_allclose([v for _, v in seen], [r["train_loss"] for r in history], rtol=1e-6)


def test_a_regression_writes_its_held_out_rmse_and_r2(tmp_path):
    X, _ = rows()
    y = (X[:, :2] @ np.array([1.0, -2.0])).reshape(-1, 1)
    history = distbp.fit(distbp.MLP([5, 8, 1], loss="mse", dtype="float64", seed=1), X, y, validation=0.2,
                         tensorboard=str(tmp_path / "tb"), **OPTIONS)
    seen = scalars(tmp_path / "tb")
    np.testing.assert_allclose([v for _, v in seen["regression/test_r2"]], [r["test_r2"] for r in history], rtol=1e-6)
    assert "accuracy/train" not in seen


def test_a_file_where_the_folder_goes_is_one_clear_error(tmp_path):
    (tmp_path / "tb").write_text("not a folder")
    X, y = rows()
    with pytest.raises(DistbpError, match="--tensorboard .*tb is a file"):
        distbp.fit(distbp.MLP([5, 8, 3]), X, y, tensorboard=str(tmp_path / "tb"), **OPTIONS)


def test_without_tensorboardx_the_error_names_the_pip_install_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError("No module named 'tensorboardX'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    X, y = rows()
    with pytest.raises(DistbpError, match=r'pip install "distbp\[tensorboard\]"'):
        distbp.fit(distbp.MLP([5, 8, 3]), X, y, tensorboard=str(tmp_path / "tb"), **OPTIONS)
