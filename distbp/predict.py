"""Using a saved model: `distbp predict` writes its outputs for the rows of a file, `distbp evaluate` scores
it on labelled data.

    distbp predict --model m.npz --data X.csv --output P.npy             # probabilities (or regression outputs)
    distbp predict --model m.npz --data X.npy --output y.csv --labels    # class labels (through the model's classes)
    distbp evaluate --model m.npz --data test.npz                        # mean loss and accuracy (or RMSE and R²)
    launch/local -n 4 distbp evaluate --model m.npz --data big/ --json   # the rows split over 4 ranks

Both read raw rows and let the model apply its training's scaling (`MLP.predict`, `MLP.scale_features`),
exactly once; regression outputs come back in the targets' own units. `predict` runs on the root: the other
ranks of an MPI job wait, sleeping, and share its verdict. `evaluate` is data-parallel: each rank scores a
contiguous share of the rows and the sums are allreduced, with training's own scoring (`distbp.train.scores`):
accuracy for classifiers, per-label and subset accuracy for multilabel ones, RMSE and R² for regressions.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from distbp.comm.base import Comm
from distbp.config import model_command_parser, parse_command, run_on_root
from distbp.data import tabular
from distbp.data.datasets import BUILTINS, Dataset, Split, load_dataset
from distbp.data.formats import is_number
from distbp.data.shard import rank_slice
from distbp.errors import DistbpError
from distbp.nn.model import MLP, load_model
from distbp.nn.modelfile import write_atomically
from distbp.train.scores import Evaluation, Scores, score_kind

CHUNK_ELEMENTS = 1 << 24  # rows × layer widths per forward pass: bounds the workspace (64 MiB per float32 array)
OUTPUTS = (".npy", ".npz", ".csv")
NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK"
CSV_FORMAT = ("comma-separated numbers, one row per line, features only (a first line that is not numbers is "
              "taken as a header and skipped)")


# ---- reading rows, writing outputs ------------------------------------------------------------------

def read_features(path: str, features: list[str] | None = None) -> np.ndarray:
    """The rows to predict on, (n, features): a 2-D .npy (memory-mapped), an .npz's member X (else X_test;
    labels are ignored), a CSV of numbers (see CSV_FORMAT), or a Parquet or HDF5 file's feature columns or
    datasets (`features`, as distbp train --features names them). Raises ValueError naming the file."""
    if not os.path.exists(path):
        raise ValueError(f"data file not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not a regular file")
    suffix = os.path.splitext(path)[1].lower()
    readers = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv, ".parquet": None, ".h5": None, ".hdf5": None}
    if suffix not in readers:
        raise ValueError(f"{path}: unsupported data format; distbp predict reads .npy (rows × features), .npz "
                         "(member X, else X_test), .csv, .parquet or .h5/.hdf5")
    if features is not None and readers[suffix] is not None:
        raise ValueError(f"--features names a Parquet file's columns or an HDF5 file's datasets, and {path} is "
                         f"a {suffix} file")
    X = tabular.feature_rows(Path(path), features) if readers[suffix] is None else readers[suffix](path)
    if X.ndim != 2:
        raise ValueError(f"{path}: the features must be 2-D (rows, features), got shape {X.shape}")
    if X.dtype.kind not in "iuf":
        raise ValueError(f"{path}: the features have non-numeric dtype {X.dtype}")
    if X.shape[0] == 0:
        raise ValueError(f"{path}: no rows")
    return X


def _starts_with(path: str, magic: bytes, what: str) -> None:
    with open(path, "rb") as fh:
        if not fh.read(len(magic)).startswith(magic):
            raise ValueError(f"{path}: not {what}")


def _read_npy(path: str) -> np.ndarray:
    _starts_with(path, NPY_MAGIC, "a .npy file")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # a bad header, a file cut short: numpy's errors vary
        raise ValueError(f"{path}: cannot read it: {e}") from None


def _read_npz(path: str) -> np.ndarray:
    _starts_with(path, ZIP_MAGIC, "an .npz (zip) file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("X", "X_test") if k in archive.files), None)
            if key is None:
                raise ValueError(f"has no member X or X_test (its members: {', '.join(archive.files) or 'none'})")
            return archive[key]
    except Exception as e:  # zip, zlib and header errors all mean a corrupt file
        raise ValueError(f"{path}: cannot read it: {e}") from None


def _read_csv(path: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        header = 1 if _is_header(first) else 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below, as "no rows"
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=header, dtype=np.float64, encoding="utf-8")
    except ValueError as e:  # also UnicodeDecodeError
        why = str(e).split("; use `usecols`")[0].rstrip(".")  # loadtxt's hint is about its own API
        raise ValueError(f"{path}: {why}; distbp predict reads a CSV of {CSV_FORMAT}") from None


def _is_header(line: str) -> bool:
    """A line with a cell that is there but not a number (an empty cell is a data error, reported by loadtxt)."""
    return any(cell.strip() and not is_number(cell) for cell in line.split(","))


def check_output_path(path: str) -> str:
    """The output's format by its extension (.npy, .npz or .csv); ValueError for anything else."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUTS:
        raise ValueError(f"--output {path}: give a file name ending in .npy, .npz or .csv")
    if os.path.isdir(path):
        raise ValueError(f"--output {path} is a directory; give a file name")
    return suffix


def check_not_an_input(output_path: str, inputs: dict[str, str]) -> None:
    """ValueError when --output is one of the inputs (inputs: flag → path): the same path once links are
    followed, or the same file (device and inode: a hard link, a bind mount). Written over, the input's rows
    (or the model) would be lost, and the next run would read the outputs as data."""
    out = os.path.realpath(output_path)
    for flag, path in inputs.items():
        same = out == os.path.realpath(path)
        if not same and os.path.exists(output_path) and os.path.exists(path):
            same = os.path.samefile(output_path, path)
        if same:
            raise ValueError(f"--output {output_path} is the {flag} file {path}: writing it would destroy "
                             "its contents; give another file name")


def write_outputs(path: str, values: np.ndarray, member: str) -> None:
    """Write values (n, outputs) or labels (n,) to path, atomically: .npy, .npz (as `member`) or .csv (floats with
    every digit their dtype needs to read back the same bits; labels as they are)."""
    suffix = check_output_path(path)
    if suffix == ".npy":
        write_atomically(path, lambda fh: np.save(fh, values))
    elif suffix == ".npz":
        write_atomically(path, lambda fh: np.savez(fh, **{member: values}))
    else:
        fmt = {"f": "%.9g" if values.dtype == np.float32 else "%.17g", "i": "%d", "u": "%d"}.get(values.dtype.kind,
                                                                                                "%s")
        write_atomically(path, lambda fh: np.savetxt(fh, values, fmt=fmt, delimiter=",", encoding="utf-8"))


# ---- predictions -----------------------------------------------------------------------------------

def predict_rows(model: MLP, X: np.ndarray) -> np.ndarray:
    """model.predict over X (n, inputs) raw rows, a chunk of rows at a time (a memory-mapped X is read a chunk
    at a time, the workspace stays bounded); returns (n, outputs) in the model's dtype. Integer features are
    converted to the model's dtype first, as training's gather does."""
    rows = max(1, CHUNK_ELEMENTS // sum(model.sizes))
    out = np.empty((X.shape[0], model.sizes[-1]), model.dtype)
    for s in range(0, X.shape[0], rows):
        chunk = np.asarray(X[s:s + rows])
        out[s:s + rows] = model.predict(chunk if chunk.dtype.kind == "f" else chunk.astype(model.dtype))
    return out


def to_labels(model: MLP, outputs: np.ndarray) -> np.ndarray:
    """The labels the outputs (n, outputs) stand for, through model.classes where the model has them:
    cross_entropy (and mse on one-hot classes): (n,) the largest output's class; binary_cross_entropy with one
    output: (n,) classes[p > ½] (0/1 without classes); multilabel: (n, outputs) int 0/1, p > ½ per label.
    ValueError for a regression."""
    if model.loss.multilabel:
        on = (outputs > 0.5).astype(np.int64)
        if outputs.shape[1] > 1:
            return on
        return on[:, 0] if model.classes is None else np.asarray(model.classes)[on[:, 0]]
    if model.loss.name == "mse" and (model.sizes[-1] == 1 or model.target_offset is not None):
        raise ValueError(f"--labels needs a classifier; this model has {model.sizes[-1]} "
                         f"{model.loss.output_activation} output(s) (loss mse): a regression")
    index = np.argmax(outputs, axis=1)
    return index if model.classes is None else model.classes[index]


def predict_file(model_path: str, data_path: str, output_path: str, labels: bool = False,
                 features: list[str] | None = None) -> str:
    """Read the model and the rows, write the outputs (or labels); returns what was written, for the log line."""
    check_output_path(output_path)  # before the work: a bad name fails at once
    check_not_an_input(output_path, {"--data": data_path, "--model": model_path})
    model = load_model(model_path)
    X = read_features(data_path, features)
    if X.shape[1] != model.sizes[0]:
        hint = " (a label column? distbp predict reads features only)" if X.shape[1] == model.sizes[0] + 1 else ""
        if data_path.endswith((".parquet", ".h5", ".hdf5")) and features is None:
            hint = " (name the feature columns or datasets with --features)"
        raise ValueError(f"{data_path} has {X.shape[1]} features per row, the model {model_path} takes "
                         f"{model.sizes[0]}{hint}")
    try:
        outputs = predict_rows(model, X)
    except ValueError as e:  # NaN or Inf in the rows
        raise ValueError(f"{data_path}: {e}") from None
    if labels:
        values = to_labels(model, outputs)
        write_outputs(output_path, values, "labels")
        if values.ndim == 2:
            return f"0/1 labels ({values.shape[1]} per row) of {X.shape[0]} rows"
        return f"class labels of {X.shape[0]} rows"
    write_outputs(output_path, outputs, "P")
    what = "probabilities" if model.loss.name != "mse" else "outputs"
    return f"{what} ({model.sizes[-1]} per row) of {X.shape[0]} rows"


# ---- evaluation ------------------------------------------------------------------------------------

def check_fits(model: MLP, data: Dataset, model_path: str, spec: str) -> None:
    """ValueError unless the features and labels (or targets) of `data` (read from `spec`) fit the model's
    inputs and outputs."""
    inputs, outputs = model.sizes[0], model.sizes[-1]
    if data.n_features != inputs:
        raise ValueError(f"{spec} has {data.n_features} features, the model {model_path} takes {inputs}")
    if data.n_classes is None:
        if model.loss.labels:
            raise ValueError(f"{spec} has float targets, but {model_path} is a classifier (loss cross_entropy)")
        if data.n_targets != outputs:
            raise ValueError(f"{spec} has {data.n_targets} targets per row, {model_path} has {outputs} outputs")
    elif model.loss.multilabel:
        raise ValueError(f"{spec} has class labels, but {model_path} takes 0/1 labels, one per output "
                         "(loss binary_cross_entropy)")
    elif data.n_classes > outputs:
        raise ValueError(f"{spec} has labels up to {data.n_classes - 1}, {model_path} has {outputs} outputs")


def data_options(model: MLP, spec: str, targets: list[str] | None = None) -> dict:
    """load_dataset's keywords that read `spec` as the model's training read its data, unscaled (the model
    scales rows and targets itself): class labels, mapped through the model's classes (names included), for a
    classifier; 0/1 labels per output for binary_cross_entropy; float targets (the CSV columns `targets`) for
    an mse model, or one-hot rows of class labels where the model names its classes or the data is a built-in
    set (which has class labels), as before."""
    if model.loss.labels or (model.loss.name == "mse" and model.classes is not None):
        kind = "classes"
    elif model.loss.multilabel:
        kind = "multilabel"
    else:
        kind = "auto" if spec.partition(":")[0] in BUILTINS else "values"
    # a model without classes: its outputs are the class numbers, which integer labels are as they are
    outputs = model.sizes[-1] if kind == "classes" and model.classes is None else None
    return {"scale": "none", "kind": kind, "classes": model.classes, "targets": targets, "scale_targets": "none",
            "outputs": outputs}


def evaluate_split(model: MLP, split: Split, comm: Comm, kind: str = "classes") -> Evaluation:
    """[dist] The scores of `model` on every row of `split` (`distbp.train.scores`, as training's evaluation
    gives them): (loss, accuracy), with `.scores` holding the kind's others (subset_accuracy; rmse, r2).

    kind: "classes", "multilabel" or "values" (`score_kind`). Rows are read unscaled and the model scales them,
    features and targets alike; with per-row weights, the weighted means. Each rank scores a contiguous share
    in chunks, and the sums are allreduced once."""
    r0, r1 = rank_slice(split.n_rows, comm.rank, comm.size)
    labels = split.n_classes is not None
    rows = max(1, min(CHUNK_ELEMENTS // sum(model.sizes), r1 - r0))
    X = np.empty((rows, model.sizes[0]), model.dtype)
    y = np.empty(rows, np.int64) if labels else np.empty((rows, model.sizes[-1]), model.dtype)
    w = None if split.w is None else np.empty(rows, model.dtype)
    ws = model.new_workspace(rows)  # the evaluation's own buffers: the scores read the outputs from them
    scores = Scores(kind, model.sizes[-1], model.target_factor if kind == "values" else None)
    for s in range(r0, r1, rows):
        k = min(rows, r1 - s)
        index = np.arange(s, s + k, dtype=np.int64)
        w_k = None if w is None else w[:k]
        split.gather(index, X[:k], y[:k], w_k)
        t = targets(model, y[:k])
        loss = model.loss_into(model.scale_features(X[:k]), t, workspace=ws, w=w_k)
        scores.add(t, loss, None if w is None else split.w[index], out=ws.a[-1][:k])
    return scores.reduce(comm)  # [dist]


def targets(model: MLP, y: np.ndarray) -> np.ndarray:
    """What the model's loss takes: int labels (n,) for cross_entropy, one-hot rows for mse on labels, float
    targets (n, outputs) scaled in place as training scaled them ((y − offset)·factor in the model's dtype,
    as features are), or as they are."""
    if model.loss.labels:
        return y
    if y.ndim == 2:
        if model.target_offset is not None:
            y -= model.target_offset.astype(y.dtype)
            y *= model.target_factor.astype(y.dtype)
        return y
    onehot = np.zeros((len(y), model.sizes[-1]), model.dtype)
    onehot[np.arange(len(y)), y] = 1
    return onehot


def warm_up(model: MLP, comm: Comm, kind: str = "classes") -> None:
    """[dist] The root compiles the evaluation's kernels (2 zero rows) while the others wait, then they load
    them from the cache: ranks do not all compile the same kernels at once."""
    if comm.size == 1:
        return
    if comm.is_root:
        X = np.zeros((2, model.sizes[0]), model.dtype)
        y = np.zeros(2, np.int64) if kind == "classes" else np.zeros((2, model.sizes[-1]), model.dtype)
        t = targets(model, y)
        ws = model.new_workspace(2)
        scores = Scores(kind, model.sizes[-1])
        scores.add(t, model.loss_into(X, t, workspace=ws), out=ws.a[-1][:2])
    comm.barrier_within(math.inf)


# ---- the commands ----------------------------------------------------------------------------------

def predict_main(argv: list[str], comm: Comm) -> int:
    """`distbp predict`: the root writes the model's outputs for the rows of --data to --output."""
    parser = model_command_parser("distbp predict",
                                  "Write a saved model's outputs (or class labels) for the rows of a file.")
    parser.add_argument("--data", metavar="FILE", help=".npy (rows × features), .npz (X, else X_test) or .csv: "
                                                       + CSV_FORMAT)
    parser.add_argument("--output", metavar="FILE", help=".npy, .npz (member P, or labels) or .csv")
    parser.add_argument("--labels", action="store_true",
                        help="write each row's class label (through the model's classes) instead of probabilities")
    parser.add_argument("--features", metavar="NAMES", help="a Parquet file's feature columns or an HDF5 file's "
                                                            "datasets, comma-separated, as distbp train --features")
    args = parse_command(parser, argv, comm, required=("model", "data", "output"))
    if args is None:
        return 0
    what = run_on_root(comm, lambda: predict_file(args.model, args.data, args.output, args.labels,
                                                  _names(args.features)), (DistbpError, ValueError, OSError))
    if comm.is_root:
        print(f"distbp: wrote the {what} to {args.output}", flush=True)
    return 0


def evaluate_main(argv: list[str], comm: Comm) -> int:
    """`distbp evaluate`: the held-out scores of a saved model on labelled data, data-parallel."""
    parser = model_command_parser("distbp evaluate",
                                  "Mean loss and accuracy (per label and subset accuracy for multilabel; RMSE and "
                                  "R² for a regression) of a saved model on labelled data: its test split if it "
                                  "has one, else all its rows.")
    parser.add_argument("--data", metavar="SPEC", help="any data spec of distbp train --data (docs/data.md); "
                                                       "class labels may be names, read through the model's classes")
    parser.add_argument("--targets", metavar="COLS", help="a CSV's target column(s) for a regression, comma-"
                                                          "separated, as distbp train --targets")
    parser.add_argument("--features", metavar="NAMES", help="a Parquet file's feature columns or an HDF5 file's "
                                                            "datasets, comma-separated, as distbp train --features")
    parser.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                        help="hold out this fraction as distbp train does (with its --seed) and score those rows, "
                             "when the data has no test split (default: 0, score all rows)")
    parser.add_argument("--seed", type=int, default=0, help="the training's --seed: synthetic data and the "
                                                            "held-out rows (default: 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the text lines")
    args = parse_command(parser, argv, comm, required=("model", "data"))
    if args is None:
        return 0
    err, model, data = None, None, None
    try:
        model = load_model(args.model)
        # unscaled rows: the model applies its own scaling, so that it is applied exactly once
        data = load_dataset(args.data, seed=args.seed, test_fraction=args.test_fraction,
                            features=_names(args.features), **data_options(model, args.data, _names(args.targets)))
        check_fits(model, data, args.model, args.data)
    except (DistbpError, ValueError, OSError) as e:
        err = e
    comm.agree_on_failure(err)  # [dist] a bad file stops every rank, reported once
    kind = score_kind(model.loss, data)
    warm_up(model, comm, kind)
    split, which = (data.test, "test") if data.test is not None else (data.train, "all")
    scores = evaluate_split(model, split, comm, kind).scores
    if comm.is_root:
        report = {"model": args.model, "data": args.data, "split": which, "rows": split.n_rows, **scores,
                  "weighted": split.w is not None, "ranks": comm.size}
        print(json.dumps(report) if args.json else text_report(report, model), flush=True)
    return 0


def text_report(r: dict, model: MLP) -> str:
    """The text lines of `distbp evaluate`: what was scored, then the scores."""
    arch = f"{'-'.join(map(str, model.sizes))} {'/'.join([*dict.fromkeys(model.activation_names), model.loss.name])}"
    rows = "its test split" if r["split"] == "test" else "all its rows (it has no test split)"
    weighted = "  (weighted)" if r.get("weighted") else ""
    return (f"distbp: {r['model']} ({arch} {model.dtype}) on {r['data']}, {rows}: {r['rows']} rows, "
            f"{r['ranks']} rank(s)\nloss {r['loss']:.6f}  {score_text(r)}{weighted}")


def score_text(r: dict) -> str:
    """'accuracy 93.00%', with '(per label)  subset accuracy 80.00%' for multilabel, or 'rmse 12.3  R² 0.8123'
    for a regression."""
    if "r2" in r:
        return f"rmse {r['rmse']:.6g}  R² {r['r2']:.6f}"
    accuracy = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
    if "subset_accuracy" in r:
        return f"accuracy {accuracy} (per label)  subset accuracy {100 * r['subset_accuracy']:.2f}%"
    return f"accuracy {accuracy}"


def _names(text: str | None) -> list[str] | None:
    """Comma-separated column or dataset names (--targets, --features) as a list; None when not given."""
    return [c.strip() for c in text.split(",")] if text else None


