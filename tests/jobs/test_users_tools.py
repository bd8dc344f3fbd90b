"""Issue 33's whole path with the tools users already have: a model trained on 2 ranks from a Parquet file
exports to ONNX, ONNX Runtime gives distbp predict's outputs and labels, and its run shows in TensorBoard's
reader; distbp predict reads the Parquet file's feature columns too."""

import numpy as np
import onnxruntime
import pandas as pd
import pytest
from jobs import run_job
from sklearn.datasets import load_iris
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.timeout(300)


def distbp(args: list[str], cwd, ranks: int = 2) -> str:
    done = run_job(ranks, ["distbp", *args], cwd=cwd, timeout=150)
    assert done.returncode == 0, done.output
    return done.stdout


def test_parquet_to_onnx_runtime_and_tensorboard(tmp_path):
    iris = load_iris(as_frame=True)
    table = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    features = list(table.columns)
    table["species"] = iris.target.map(dict(enumerate(iris.target_names)))
    table["note"] = "unused"  # a column that is neither a feature nor the target
    table.to_parquet(tmp_path / "iris.parquet")
    names = ",".join(features)
    distbp(["train", "--data", "iris.parquet", "--features", names, "--targets", "species", "--activation", "tanh",
            "--optimizer", "adam", "--lr", "0.01", "--lr-scale", "mean", "--batch-size", "16", "--epochs", "30",
            "--save", "m.npz", "--tensorboard", "tb", "--progress", "none"], tmp_path)
    distbp(["export", "--model", "m.npz", "--onnx", "m.onnx"], tmp_path, 1)
    distbp(["predict", "--model", "m.npz", "--data", "iris.parquet", "--features", names, "--output", "P.npy"],
           tmp_path, 1)
    distbp(["predict", "--model", "m.npz", "--data", "iris.parquet", "--features", names, "--output", "L.csv",
            "--labels"], tmp_path, 1)

    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    X = table[features].to_numpy(np.float32)
    probabilities, labels = (session.run(["probabilities", "label"], {"X": X}))
    np.testing.assert_allclose(probabilities, np.load(tmp_path / "P.npy"), rtol=1e-5, atol=1e-6)
    ours = (tmp_path / "L.csv").read_text().split()
    assert labels.tolist() == ours and np.mean(np.array(ours) == table["species"].to_numpy()) >= 0.9

    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    losses = board.Scalars("loss/train")
    assert len(losses) == 30 and losses[-1].value < losses[0].value
    assert [e.step for e in losses] == sorted({e.step for e in losses})  # one value per step, in order


def test_predict_names_what_it_needs_of_a_parquet_file(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "label": [0, 1]})
    frame.to_parquet(tmp_path / "rows.parquet")
    done = run_job(1, ["distbp", "train", "--data", "rows.parquet", "--layers", "2,2,2", "--epochs", "1",
                       "--test-fraction", "0", "--batch-size", "2", "--save", "m.npz", "--progress", "none"],
                   cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.output
    done = run_job(1, ["distbp", "predict", "--model", "m.npz", "--data", "rows.parquet", "--output", "P.npy"],
                   cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "--features" in done.stderr and "3 features per row" in done.stderr
