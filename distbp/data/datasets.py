"""Datasets: load rows from a built-in generator or a file, split, and gather scaled rows into buffers.

A Split keeps its features unscaled (possibly as a read-only np.memmap, so each
rank reads only the rows it gathers); `gather` writes the requested rows into a
preallocated buffer with the dataset's scaling applied. Scaling statistics come
from the training split and are applied to the test split unchanged.

Formats: see docs/data.md; their readers are `distbp.data.formats`. Every loader ends in `_build`, which validates the
arrays, holds out a test split if none was given and computes the scaling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distbp.data import cache as datacache
from distbp.data import formats, tabular, targets
from distbp.data.rows import compiled_for, take_labels, take_scaled_rows
from distbp.data.targets import KINDS, SCALE_TARGETS

BUILTINS = ("synthetic", "digits")
ARRAYS = "arrays"  # the name of a dataset of in-memory arrays (`from_arrays`)
SCALES = ("auto", "standardize", "minmax", "none")
CHUNK_ELEMENTS = 1 << 22  # elements per chunk for statistics and NaN checks (32 MiB of float64)
# bytes of each row block (and of its scratch) in product_without_blas and add_standard_normal: L2-sized (the
# default synthetic data's draw: 1.61 s against 2.01 s with 2.6 MB blocks and one noise temporary,
# benchmarks/synthetic_data.py; smaller blocks add numpy call overhead)
PRODUCT_BLOCK_BYTES = 1 << 19


@dataclass
class Split:
    """A set of rows: X (N, n_features) unscaled, maybe a memmap; y class numbers (n_rows,) int64 or targets
    (n_rows, k) float64 (0/1 for multilabel), unscaled."""

    X: np.ndarray  # (N, n_features) source rows, never modified; may be a np.memmap
    y: np.ndarray  # (n_rows,) int64 class numbers 0…K−1 or (n_rows, n_targets) float64 targets, in memory
    index: np.ndarray | None  # (n_rows,) int64 rows of X in this split; None means all rows of X
    offset: np.ndarray  # (n_features,) float64, subtracted from each row in gather
    factor: np.ndarray  # (n_features,) float64, multiplied into each row after the offset
    n_classes: int | None  # number of classes for class numbers, None for float (and multilabel) targets
    w: np.ndarray | None = None  # (n_rows,) float64 per-row weights of L = Σₙ wₙ lⁿ, finite and >= 0; None: all 1
    target_offset: np.ndarray | None = None  # (n_targets,) float64 subtracted from the targets in gather, or None
    target_factor: np.ndarray | None = None  # (n_targets,) float64 multiplied in after the offset, or None
    _cast: dict = field(default_factory=dict, init=False, repr=False)  # offset/factor cast per output dtype
    _compiled: bool = field(init=False, repr=False)  # X readable by distbp.data.rows' one-call gather

    def __post_init__(self) -> None:
        self._compiled = compiled_for(self.X)

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def labels(self) -> np.ndarray:
        """All class numbers (n_rows,) int64, or targets (n_rows, n_targets) unscaled; do not modify."""
        return self.y

    def gather(self, rows: np.ndarray, X_out: np.ndarray, y_out: np.ndarray, w_out: np.ndarray | None = None) -> None:
        """Write scaled features of `rows` (int64, any order) into X_out (len(rows), n_features).

        y_out is int64 (len(rows),) for class numbers, or float (len(rows), n_targets): one-hot rows for class
        numbers, the targets for float targets, scaled as y_scaled = (y − target_offset)·target_factor when the
        split has a target scaling. w_out (len(rows),): the rows' weights (this split must have them), cast to
        w_out's dtype.
        """
        n = len(rows)
        if X_out.shape != (n, self.X.shape[1]):
            raise ValueError(f"X_out has shape {X_out.shape}, expected {(n, self.X.shape[1])}")
        if not self._gather_features(rows, X_out):
            raise IndexError(f"rows must lie in [0, {self.n_rows}), got {rows.min()}..{rows.max()}")
        self._gather_labels(rows, y_out)
        if w_out is not None:  # rows are checked above; the weights cast once per dtype, so no copy per call
            np.take(self._weights_in(w_out.dtype), rows, out=w_out, mode="clip")

    def gather_kernel_types(self, dtype: np.dtype) -> tuple:
        """What selects the compiled gather's machine code for buffers of `dtype` (a warm-up's key): the source's
        dtype, whether rows go through an index, which of the scaling's offset and factor apply."""
        offset, factor = self._scaling_in(np.dtype(dtype))
        return (str(self.X.dtype), str(np.dtype(dtype)), self.index is None, offset is None, factor is None,
                self._compiled)

    def warm_gather(self, dtype: np.dtype) -> None:
        """Compile (or load) the gather of this split into buffers of `dtype`, on no rows (the warm-up's)."""
        self._gather_features(np.zeros(0, np.int64), np.zeros((0, self.X.shape[1]), dtype))
        if self.y.ndim == 1 and self.y.dtype == np.int64:
            take_labels(self.y, np.zeros(0, np.int64), np.zeros(0, np.int64))  # the class numbers' take

    def _gather_features(self, rows: np.ndarray, X_out: np.ndarray) -> bool:
        """X_out = the scaled features of rows; False (X_out untouched) if a row lies outside [0, n_rows)."""
        scaling = self._scaling_in(X_out.dtype)
        if self._compiled and rows.dtype == np.int64 and rows.ndim == 1:  # one compiled call (distbp.data.rows)
            return take_scaled_rows(self.X, self.index, rows, self.n_rows, X_out, *scaling) == 0
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n_rows):
            return False
        source_rows = rows if self.index is None else np.take(self.index, rows)
        _take_scaled(self.X, source_rows, X_out, *scaling)
        return True

    def _gather_labels(self, rows: np.ndarray, y_out: np.ndarray) -> None:
        n = len(rows)
        if self.n_classes is None:
            if y_out.shape != (n, self.y.shape[1]) or y_out.dtype.kind != "f":
                raise ValueError(f"float targets need a float y_out of shape {(n, self.y.shape[1])}, "
                                 f"got {y_out.dtype} {y_out.shape}")
            _take_scaled(self.y, rows, y_out, *self._target_scaling_in(y_out.dtype))
        elif y_out.ndim == 1:
            if y_out.shape != (n,) or y_out.dtype != np.int64:
                raise ValueError(f"class labels need an int64 y_out of shape {(n,)}, got {y_out.dtype} {y_out.shape}")
            if self.y.dtype == np.int64 and rows.dtype == np.int64:  # rows checked by _gather_features
                take_labels(self.y, rows, y_out)
            else:
                np.take(self.y, rows, out=y_out, mode="clip")
        else:
            if y_out.shape != (n, self.n_classes) or y_out.dtype.kind != "f":
                raise ValueError(f"one-hot labels need a float y_out of shape {(n, self.n_classes)}, "
                                 f"got {y_out.dtype} {y_out.shape}")
            y_out.fill(0)
            y_out[np.arange(n), self.y[rows]] = 1

    def _weights_in(self, dtype: np.dtype) -> np.ndarray:
        key = ("w", np.dtype(dtype))
        if key not in self._cast:
            self._cast[key] = self.w.astype(dtype)
        return self._cast[key]

    def _target_scaling_in(self, dtype: np.dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
        key = ("targets", np.dtype(dtype))
        if key not in self._cast:
            self._cast[key] = ((None, None) if self.target_offset is None else
                               (self.target_offset.astype(dtype), self.target_factor.astype(dtype)))
        return self._cast[key]

    def _scaling_in(self, dtype: np.dtype) -> tuple[np.ndarray | None, np.ndarray | None]:
        # cast once per output dtype, so that gather allocates nothing for scaling.
        if dtype not in self._cast:
            offset = None if not self.offset.any() else self.offset.astype(dtype)
            factor = None if (self.factor == 1).all() else self.factor.astype(dtype)
            self._cast[dtype] = (offset, factor)
        return self._cast[dtype]


def _take_scaled(source: np.ndarray, rows: np.ndarray, out: np.ndarray, offset: np.ndarray | None,
                 factor: np.ndarray | None) -> None:
    """out (len(rows), k) = (source[rows] − offset)·factor, each of offset and factor (k,) in out's dtype or None
    (skipped). rows are checked by `Split.gather`, so the take needs no bounds mode that would buffer out (a copy
    per call); np.take cannot cast into out, so another dtype goes through one temporary in the source's dtype."""
    if out.dtype == source.dtype:
        np.take(source, rows, axis=0, out=out, mode="clip")
    else:
        out[...] = source[rows]
    if offset is not None:
        out -= offset
    if factor is not None:
        out *= factor


_SAME = object()  # `Dataset.rescaled`: keep this dataset's value


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split | None
    n_features: int
    n_classes: int | None  # number of classes for class numbers; None for float (and multilabel) targets
    n_targets: int  # n_classes for class numbers, else the targets' width
    scaling: str  # what gather applies, e.g. "standardized (train mean/std)"
    from_cache: bool = False  # read from the data cache (distbp.data.cache), not drawn
    classes: np.ndarray | None = None  # (n_classes,) the sorted labels class numbers 0…K−1 stand for, None when the
    # labels are those numbers; multilabel: (n_targets,) the outputs' names, or the two labels of one column
    multilabel: bool = False  # y is float (rows, k) 0/1, one yes/no per output (binary_cross_entropy)
    target_offset: np.ndarray | None = None  # (n_targets,) float64: gather writes y_scaled = (y − offset)·factor
    target_factor: np.ndarray | None = None  # (n_targets,) float64; both None: targets as they are
    kind_asked: str = "auto"  # the kind it was loaded for (targets.KINDS): --local-rows ranks decide alike with it
    outputs_asked: int | None = None  # the output layer it was loaded for (--layers), likewise

    @property
    def kind(self) -> str:
        """"classes" (class numbers), "multilabel" (0/1 per output) or "values" (float targets)."""
        return "multilabel" if self.multilabel else "classes" if self.n_classes is not None else "values"

    def rescaled(self, offset: np.ndarray, factor: np.ndarray, scaling: str, n_classes: int | None, *,
                 classes=_SAME, target_offset=_SAME, target_factor=_SAME,
                 labels: tuple[np.ndarray, np.ndarray | None] | None = None) -> "Dataset":
        """This dataset with another scaling and class count, and, where given, other classes, target scaling
        and labels (the splits' (train y, test y) renumbered for `classes`): what the ranks that each hold
        their own rows agree on (distbp.data.localdata). The rows themselves are shared, not copied."""
        classes = self.classes if classes is _SAME else classes
        target_offset = self.target_offset if target_offset is _SAME else target_offset
        target_factor = self.target_factor if target_factor is _SAME else target_factor

        def split(s: Split | None, y: np.ndarray | None) -> Split | None:
            return None if s is None else Split(s.X, s.y if y is None else y, s.index, offset, factor, n_classes,
                                                s.w, target_offset, target_factor)
        y_train, y_test = labels if labels is not None else (None, None)
        return dataclasses.replace(self, train=split(self.train, y_train), test=split(self.test, y_test),
                                   n_classes=n_classes, n_targets=n_classes if n_classes else self.n_targets,
                                   scaling=scaling, classes=classes, target_offset=target_offset,
                                   target_factor=target_factor)

    def scaling_part(self, scale: str) -> dict:
        """The training rows' statistics for `scale` (see `scaling_part`)."""
        return scaling_part(self.train.X, self.train.index, scale)

    def target_part(self) -> dict:
        """The training targets' moments {"count", "mean", "m2"} ((n_targets,) float64), for `target_scaling`."""
        count, mean, m2 = _moments(self.train.y, None)
        return {"count": count, "mean": mean, "m2": m2}

    def split_arrays(self) -> dict[str, np.ndarray]:
        """{"X", "y"} of the training rows and {"X_test", "y_test"} of the test rows (unscaled; rows through
        the splits' index): what `_build` gives this dataset again, with its test split given."""
        arrays = {}
        for prefix, split in (("", self.train), ("_test", self.test)):
            if split is not None:
                X = split.X if split.index is None else split.X[split.index]
                arrays["X" + prefix], arrays["y" + prefix] = X, split.y
        return arrays

    def fingerprint(self, sample_rows: int = 64) -> str:
        """sha256 of the splits' shapes, scaling and `sample_rows` rows spread over each split, as gathered:
        cheap, and different when ranks read different data under the same name."""
        # what is new since the fingerprint was first defined only counts where it is set: today's data keeps its hash
        extra = (() if self.classes is None else (self.classes.tolist(),)) + (("multilabel",) if self.multilabel
                                                                             else ())
        h = hashlib.sha256(repr((self.n_features, self.n_classes, self.n_targets, self.scaling, *extra)).encode())
        if self.target_offset is not None:
            h.update(self.target_offset.tobytes() + self.target_factor.tobytes())
        for split in (self.train, self.test):
            if split is None:
                continue
            rows = np.unique(np.linspace(0, split.n_rows - 1, min(sample_rows, split.n_rows)).astype(np.int64))
            X = np.empty((len(rows), self.n_features), np.float64)
            y = (np.empty(len(rows), np.int64) if split.y.ndim == 1 else np.empty((len(rows), self.n_targets)))
            split.gather(rows, X, y)
            weights = () if split.w is None else (split.w,)
            for a in (np.array([split.n_rows]), split.offset, split.factor, X, y, *weights):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Meaning:
    """What y means (`distbp.data.targets`): the loss's kind, the target scaling, a model's classes to map
    labels through, and how errors name what to use instead."""

    kind: str = "auto"  # targets.KINDS
    scale_targets: str = "none"  # targets.SCALE_TARGETS: "standardize" float targets with the train mean/std
    classes: np.ndarray | None = None  # a model's classes: labels map through these
    hints: targets.Hints = targets.FLAGS
    outputs: int | None = None  # the run's output layer, when given: integer labels that fit it are class numbers

    def check(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.scale_targets not in SCALE_TARGETS:
            raise ValueError(f"unknown scale_targets {self.scale_targets!r}; choose one of {', '.join(SCALE_TARGETS)}")


def load_dataset(spec: str, *, seed: int = 0, test_fraction: float = 0.1, scale: str = "auto",
                 weights: str | None = None, targets: list[str] | str | None = None, kind: str = "auto",
                 scale_targets: str = "none", classes: np.ndarray | None = None,
                 features: list[str] | str | None = None, outputs: int | None = None) -> Dataset:
    """Load a built-in dataset (`synthetic[:key=value,...]`, `digits`) or a file/directory (see docs/data.md).

    weights: the CSV or Parquet column or HDF5 dataset holding each row's weight (an .npz's member w and a
    folder's w.npy are read without it). targets: the CSV or Parquet column(s), .npz members, HDF5 datasets or a
    folder's NAME.npy files holding y (default: a CSV's or Parquet file's 'label' column, else its last; an
    .npz's or HDF5 file's y). features: the Parquet columns or HDF5 datasets holding X (default: a Parquet
    file's columns but the targets and weights; an HDF5 file's X). kind: what y is for the loss (`distbp.data.targets`):
    "classes" (cross_entropy), "multilabel" (binary_cross_entropy), "values" (mse), "auto" (integer labels
    are classes, float (rows, k) values). scale_targets: "standardize" float targets (train mean/std).
    classes: a model's classes, which labels map through (a label they lack is an error).
    """
    meaning = Meaning(kind, scale_targets, classes, outputs=outputs)
    meaning.check()
    targets = [targets] if isinstance(targets, str) else None if targets is None else list(targets)
    features = [features] if isinstance(features, str) else None if features is None else list(features)
    name, _, _ = spec.partition(":")
    tabular_file = name not in BUILTINS and Path(spec).suffix in tabular.PARQUET + tabular.HDF5
    if weights is not None and (name in BUILTINS or Path(spec).suffix != ".csv") and not tabular_file:
        raise ValueError(f"--weights names a column of a CSV or Parquet file or an HDF5 dataset, and {spec} is "
                         "none of these: an .npz holds its rows' weights as a member w, a folder as w.npy")
    if features is not None and not tabular_file:
        raise ValueError(f"--features names the columns of a Parquet file or the datasets of an HDF5 file, and "
                         f"{spec} is neither (.parquet, .h5, .hdf5): its features are the "
                         f"{'CSV columns but the targets' if Path(spec).suffix == '.csv' else 'array X'}")
    if targets is not None and name in BUILTINS:
        raise ValueError(f"--targets names a CSV's columns or an .npz's members, and {spec} is a built-in set "
                         "(its labels are its y)")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    name, _, options = spec.partition(":")
    if name == "synthetic":
        keys = _synthetic_options(options)
        entry = cache_entry(spec, seed, test_fraction)  # a large set is drawn once per machine, then mapped
        cached = datacache.load(entry) if entry is not None else None
        if cached is not None:
            moments = {"features": keys["features"], "uint8": False, "count": int(cached.pop("train_count")[0]),
                       "mean": cached.pop("train_mean"), "m2": cached.pop("train_m2")}
            dataset = _build("synthetic", "synthetic", cached, seed, test_fraction, scale, keys["classes"],
                             known_parts={"auto": moments, "standardize": moments}, meaning=meaning)
            return dataclasses.replace(dataset, from_cache=True)
        dataset = _build("synthetic", "synthetic", _synthetic(keys, seed), seed, test_fraction, scale, keys["classes"],
                         meaning=meaning)
        if entry is not None:
            arrays = dataset.split_arrays()
            moments = scaling_part(arrays["X"], None, "standardize")
            datacache.store(entry, {**arrays, "train_count": np.array([moments["count"]]),
                                    "train_mean": moments["mean"], "train_m2": moments["m2"]})
        return dataset
    if name == "digits" and not options:
        return _build("digits", "digits", _digits(), seed, test_fraction, scale, meaning=meaning)
    path = Path(spec)
    if not path.exists():
        if os.sep not in spec and "." not in spec:
            raise ValueError(f"unknown built-in dataset {spec!r}; built-ins are {', '.join(BUILTINS)}, "
                             f"or give a path to a .npz, .csv, .parquet, .h5, a directory of .npy files or MNIST IDX "
                             "files")
        raise FileNotFoundError(f"dataset not found: {spec}")
    if not (path.is_file() or path.is_dir()):  # a FIFO, a device, a socket: reading would block or never end
        raise ValueError(f"{path}: not a regular file or a directory")
    try:
        arrays, files, columns = _read(path, weights, targets, kind, features)
        return _build(path.name, str(path), arrays, seed, test_fraction, scale, files=files, meaning=meaning,
                      columns=columns)
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to load it; a folder of .npy files is memory-mapped, so "
                         "each rank reads only the rows it gathers") from None
    except OSError as e:
        if e.filename is not None or str(path) in str(e):
            raise  # it names the file already
        raise ValueError(f"{path}: cannot read it: {e.strerror or e}") from e  # an I/O error names no file


def cache_entry(spec: str, seed: int = 0, test_fraction: float = 0.1) -> Path | None:
    """The data cache's folder for a generated built-in set (`distbp.data.cache`; it may not exist yet), or
    None for files, small sets, or when the cache is off."""
    name, _, options = spec.partition(":")
    if name != "synthetic":
        return None
    keys = _synthetic_options(options)
    features_bytes = 4 * keys["features"] * (keys["rows"] + (keys["test"] or 0))
    return datacache.entry_for("synthetic", keys, seed, test_fraction, features_bytes)


def from_arrays(X: np.ndarray, y: np.ndarray, validation: tuple | None = None, *,
                name: str = ARRAYS, seed: int = 0, test_fraction: float = 0.0, scale: str = "auto",
                sample_weight: np.ndarray | None = None, kind: str = "auto", scale_targets: str = "none",
                classes: np.ndarray | None = None) -> Dataset:
    """A dataset of in-memory arrays, checked, split and scaled exactly like a file's (`_build`).

    X (rows, features) numeric; y what `kind` takes (`load_dataset`, `distbp.data.targets`): (rows,) class
    labels (integers, or any numbers or strings for kind "classes", strings for "auto"), a (rows, k) 0/1
    matrix or one column of two labels ("multilabel"), or (rows,) / (rows, k) float targets ("values"; "auto"
    takes (rows, k) floats); validation: (X_test, y_test) or (X_test, y_test, w_test) as the held-out split,
    else test_fraction of X's rows (0: none). sample_weight (rows,): each row's weight wₙ in L = Σₙ wₙ lⁿ
    (finite, >= 0). scale_targets, classes: as in `load_dataset`. Errors name the Python keywords.
    The arrays are used in place when they need no conversion (never modified).
    """
    meaning = Meaning(kind, scale_targets, classes, targets.KEYWORDS)
    meaning.check()
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    arrays = {"X": _as_array(X, "X"), "y": _as_array(y, "y")}
    if sample_weight is not None:
        arrays["w"] = _as_array(sample_weight, "sample_weight")
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) in (2, 3)):
            raise ValueError("validation must be a pair (X_val, y_val) or a triple (X_val, y_val, w_val)")
        arrays["X_test"], arrays["y_test"] = _as_array(validation[0], "X_val"), _as_array(validation[1], "y_val")
        if len(validation) == 3 and validation[2] is not None:
            arrays["w_test"] = _as_array(validation[2], "w_val")
    return _build(name, name, arrays, seed, test_fraction, scale, meaning=meaning,
                  names={"w": "sample_weight", "w_test": "the validation weights"})


def _as_array(a, what: str) -> np.ndarray:
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not an array: {e}") from None


def _read(path: Path, weights: str | None = None, targets: list[str] | None = None, kind: str = "auto",
          features: list[str] | None = None) -> tuple[dict, dict | None, list[str] | None]:
    """The raw arrays of a file or folder, for a folder (or a Parquet or HDF5 file) what each array came from
    (errors name it), and the names of y's columns (a CSV's or Parquet file's target columns, the members,
    datasets or files named by `targets`), or None."""
    if path.is_dir():
        if (path / "X.npy").exists():
            return (*formats.read_npy_directory(path, targets), targets)
        if targets is not None:
            raise ValueError(f"{path}: --targets names a CSV's columns, an .npz's members or a folder's NAME.npy "
                             "files; MNIST IDX files hold one label file")
        return (*formats.read_idx_directory(path), None)
    if path.suffix == ".npz":
        return (formats.read_npz(path) if targets is None else formats.read_npz(path, targets)), None, targets
    if path.suffix == ".csv":
        arrays = formats.read_csv(path, weights, targets, kind)
        return arrays, None, arrays.pop("columns")
    if path.suffix in tabular.PARQUET:
        return tabular.read_parquet(path, features, targets, weights)
    if path.suffix in tabular.HDF5:
        return tabular.read_hdf5(path, features, targets, weights)
    raise ValueError(f"{path}: unsupported format; expected a .npz, a .csv, a .parquet, an .h5/.hdf5 or a directory")


# ---------------------------------------------------------------- built-ins


def _synthetic_options(options: str) -> dict:
    """{"rows", "features", "classes", "test"} of 'rows=…,features=…' (defaults for the keys not given)."""
    keys = {"rows": 60000, "features": 784, "classes": 10, "test": None}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in keys:
            raise ValueError(f"synthetic: unknown key {key!r}; keys are {', '.join(keys)}")
        try:
            keys[key] = int(value)
        except ValueError:
            raise ValueError(f"synthetic: {key} must be an integer, got {value!r}") from None
    if keys["rows"] <= 0 or keys["features"] <= 0 or keys["classes"] <= 1 or (keys["test"] is not None
                                                                             and keys["test"] <= 0):
        raise ValueError(f"synthetic: need rows > 0, features > 0, classes > 1, test > 0; got {options!r}")
    return keys


def _synthetic(keys: dict, seed: int) -> dict:
    """Class-conditional Gaussian clusters in a random 24-dimensional subspace, plus isotropic noise.

    Each class has 4 cluster centres (N(0, 1.2^2) in the subspace); a row is a centre plus
    N(0, 1) in the subspace, mapped to `features` dimensions, plus N(0, 1) per feature.
    Measured on the defaults: linear models reach 55-67 % held-out accuracy, a 784-256-10 MLP
    (SGD, batch 128) 96-98 % after 3 epochs. keys: `_synthetic_options`.
    """
    rows, features, classes, test = keys["rows"], keys["features"], keys["classes"], keys["test"]
    latent, per_class = 24, 4
    rng = np.random.default_rng([seed, 20240])
    centres = rng.standard_normal((classes, per_class, latent), dtype=np.float32) * np.float32(1.2)
    basis = rng.standard_normal((latent, features), dtype=np.float32) / np.float32(np.sqrt(latent))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        z = centres[y, rng.integers(0, per_class, n)]
        z += rng.standard_normal((n, latent), dtype=np.float32)
        X = np.empty((n, features), np.float32)
        product_without_blas(z, basis, X)
        add_standard_normal(rng, X)
        return X, y

    X, y = draw(rows)
    arrays = {"X": X, "y": y}
    if test is not None:
        arrays["X_test"], arrays["y_test"] = draw(test)
    return arrays


def add_standard_normal(rng: np.random.Generator, X: np.ndarray) -> None:
    """X (n, m) float32 += N(0, 1) noise, drawn in row order: the values of X += rng.standard_normal((n, m)),
    drawn into one L2-sized block at a time (no n x m temporary; see PRODUCT_BLOCK_BYTES)."""
    block = max(1, PRODUCT_BLOCK_BYTES // (X.itemsize * X.shape[1]))
    noise = np.empty((block, X.shape[1]), X.dtype)
    for s in range(0, X.shape[0], block):
        part = noise[:min(block, X.shape[0] - s)]
        rng.standard_normal(out=part, dtype=X.dtype)
        X[s:s + block] += part


def product_without_blas(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (n, m) = a (n, k) · b (k, m), summed over k in order by element-wise passes.

    A BLAS product's bits depend on its thread count and on the CPU's kernels (seen: float32 GEMM
    differs between 1 and 2 OpenBLAS threads on AMD Zen 3), and data must not. Separate multiply
    and add passes are exactly rounded element by element, so these bits are the same everywhere.
    """
    rows = max(1, PRODUCT_BLOCK_BYTES // (out.itemsize * b.shape[1]))  # row blocks that stay in L2
    tmp = np.empty((rows, b.shape[1]), out.dtype)
    for s in range(0, a.shape[0], rows):
        o, t, ai = out[s:s + rows], tmp[:min(rows, a.shape[0] - s)], a[s:s + rows]
        np.multiply(ai[:, :1], b[0], out=o)
        for k in range(1, b.shape[0]):
            np.multiply(ai[:, k:k + 1], b[k], out=t)
            o += t


def _digits() -> dict:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    return {"X": bunch.data.astype(np.float32), "y": bunch.target.astype(np.int64)}


# ---------------------------------------------------------------- validation, split and scaling


def _build(name: str, source: str, arrays: dict, seed: int, test_fraction: float, scale: str,
           n_classes: int | None = None, files: dict | None = None, known_parts: dict | None = None,
           names: dict | None = None, meaning: Meaning = Meaning(), columns: list[str] | None = None) -> Dataset:
    """Validate X, y, w (and X_test, y_test, w_test), give y its meaning, hold out a test split if none is
    given, compute the scaling. w: per-row weights (optional; the held-out rows keep theirs).

    n_classes: a built-in set's class count (its labels are class numbers); known_parts: `scaling_part` of the
    training rows by scale, already known (the data cache keeps them); names: what to call an array in errors,
    where not "<key> (<file>)"; meaning: what y is (`Meaning`); columns: the names of y's columns."""
    names = {key: f"{key} ({files[key] if files else source})" for key in arrays} | (names or {})
    X = _check_features(arrays["X"], arrays["y"], names["X"], names["y"])
    w = check_weights(arrays["w"], len(X), names["w"]) if "w" in arrays else None
    w_test = None
    if "X_test" in arrays:
        X_test = _check_features(arrays["X_test"], arrays["y_test"], names["X_test"], names["y_test"])
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(f"{source}: X_test has {X_test.shape[1]} features, X has {X.shape[1]}")
    # the labels' meaning is decided on all rows (train and test together), before any are held out
    labels = targets.prepare(arrays["y"], arrays.get("y_test"), kind=meaning.kind, where=source,
                             names=(names["y"], names.get("y_test", "y_test")), given=meaning.classes,
                             known=n_classes, columns=columns, hints=meaning.hints, outputs=meaning.outputs)
    y, y_test = labels.y, labels.y_test
    if "X_test" in arrays:
        train_index, test_index = None, None
        if "w_test" in arrays:
            w_test = check_weights(arrays["w_test"], len(X_test), names["w_test"])
    elif test_fraction > 0:
        train_index, test_index = _held_out(len(X), seed, test_fraction, source)
        X_test, y_test = X, y[test_index]
        y = y[train_index]
        if w is not None:
            w, w_test = w[train_index], w[test_index]
    else:
        X_test = y_test = train_index = test_index = None
    if not isinstance(X, np.memmap) and train_index is not None:
        # in-memory rows are copied once, so that gather needs no index indirection.
        X, X_test = X[train_index], X[test_index]
        train_index = test_index = None

    n_classes = labels.n_classes
    part = (known_parts or {}).get(scale) or scaling_part(X, train_index, scale)
    offset, factor, scaling = scaling_from_parts([part], scale)
    target_offset = target_factor = None
    if meaning.scale_targets == "standardize":
        if n_classes is not None or labels.multilabel:
            what = "0/1 multilabel targets" if labels.multilabel else "class labels"
            raise ValueError(f"{source}: scale_targets standardize scales float targets (loss mse), and its y holds "
                             f"{what}")
        count, mean, m2 = _moments(y, None)
        target_offset, target_factor = target_scaling([{"count": count, "mean": mean, "m2": m2}])
    train = Split(X, y, train_index, offset, factor, n_classes, w, target_offset, target_factor)
    test = (None if X_test is None else
            Split(X_test, y_test, test_index, offset, factor, n_classes, w_test, target_offset, target_factor))
    n_targets = n_classes if n_classes is not None else y.shape[1]
    return Dataset(name, train, test, X.shape[1], n_classes, n_targets, scaling, classes=labels.classes,
                   multilabel=labels.multilabel, target_offset=target_offset, target_factor=target_factor,
                   kind_asked=meaning.kind, outputs_asked=meaning.outputs)


def target_scaling(parts: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(offset, factor) (n_targets,) float64 standardizing the targets of the row sets of `parts` together
    (`Dataset.target_part`, merged in order): offset the mean, factor 1/std (population std; a constant
    target's factor is 1)."""
    count, mean, m2 = 0, np.zeros_like(parts[0]["mean"]), np.zeros_like(parts[0]["mean"])
    for p in parts:
        count, mean, m2 = _merge_moments((count, mean, m2), (p["count"], p["mean"], p["m2"]))
    std = np.sqrt(m2 / count)
    std[std == 0] = 1
    return mean, 1 / std


def _check_features(X: np.ndarray, y: np.ndarray, x_name: str, y_name: str) -> np.ndarray:
    """Validate the features (and that y has a row for each); return X unchanged (maybe a memmap).

    x_name and y_name say where the arrays came from (file and array), for the error messages.
    """
    if X.ndim != 2:
        raise ValueError(f"{x_name} must be 2-D (rows, features), got shape {X.shape}")
    if X.dtype.kind not in "iuf":
        raise ValueError(f"{x_name} has non-numeric dtype {X.dtype}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"empty dataset: {x_name} has shape {X.shape}")
    if np.ndim(y) == 0:
        raise ValueError(f"{y_name} must hold one label or target per row, got a scalar")
    if len(y) != X.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} rows but {y_name} has {len(y)}")
    if X.dtype.kind == "f":
        _check_finite(X, x_name)
    return X


def check_weights(w: np.ndarray, rows: int, what: str) -> np.ndarray:
    """Per-row weights as float64 (rows,): finite and >= 0 (a zero weight leaves its row out of L and ∇L)."""
    if w.ndim != 1 or len(w) != rows:
        raise ValueError(f"{what} must hold one weight per row ({rows},), got shape {w.shape}")
    if w.dtype.kind not in "iuf" or w.dtype.kind == "b":
        raise ValueError(f"{what} must be numbers, got dtype {w.dtype}")
    w = np.array(w, np.float64)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}: weights must be finite and >= 0; row {first} has {w[first]} "
                         f"({int(bad.sum())} such row(s))")
    return w


def _check_finite(A: np.ndarray, what: str) -> None:
    """Raise naming how many NaN/Inf values A holds and the first row; reads A in chunks."""
    step = max(1, CHUNK_ELEMENTS // max(1, A.shape[1] if A.ndim == 2 else 1))
    count, first = 0, None
    for start in range(0, len(A), step):
        finite = np.isfinite(A[start : start + step])
        if not finite.all():
            bad_rows = ~finite.reshape(len(finite), -1).all(axis=1)
            count += int((~finite).sum())
            if first is None:
                first = start + int(np.flatnonzero(bad_rows)[0])
    if count:
        raise ValueError(f"{what} has {count} NaN or Inf values; the first is in row {first}")


def _held_out(n_rows: int, seed: int, test_fraction: float, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) row indices; the test rows are the first round(fraction·n) of a seeded permutation."""
    n_test = max(1, round(test_fraction * n_rows))
    if n_test >= n_rows:
        raise ValueError(f"{source}: {n_rows} rows are too few to hold out a test fraction of {test_fraction}")
    perm = np.random.default_rng([seed, 1]).permutation(n_rows)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def scaling_part(X: np.ndarray, index: np.ndarray | None, scale: str) -> dict:
    """What `scale` needs of the training rows X[index]: their count, and their moments (count, mean, m2)
    or range (low, high) as (features,) float64 arrays; parts of several row sets merge exactly."""
    part = {"features": X.shape[1], "uint8": X.dtype == np.uint8}
    if scale in ("auto", "standardize") and not (scale == "auto" and part["uint8"]):
        part["count"], part["mean"], part["m2"] = _moments(X, index)
    elif scale == "minmax":
        part["low"], part["high"] = _min_max(X, index)
    return part


def scaling_from_parts(parts: list[dict], scale: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(offset, factor, description) for the union of the row sets of `parts` (`scaling_part`), in order.

    Raises ValueError when a feature's statistics are not finite (values near float64's limit): the data
    cannot be scaled, which training would otherwise report as a diverging learning rate."""
    offset, factor, how = _scaling(parts, scale)
    bad = np.flatnonzero(~(np.isfinite(offset) & np.isfinite(factor) & (factor != 0)))
    if bad.size:
        shown = ", ".join(map(str, bad[:5].tolist())) + (", …" if bad.size > 5 else "")
        raise ValueError(f"feature(s) {shown}: the training rows' values are too large to scale "
                         f"({how.split(' (')[0]}: offset {offset[bad[0]]:g}, factor {factor[bad[0]]:g}); rescale "
                         "the data (e.g. divide it by a power of ten) or pass --scale none")
    return offset, factor, how


def _scaling(parts: list[dict], scale: str) -> tuple[np.ndarray, np.ndarray, str]:
    d = parts[0]["features"]
    if scale == "none":
        return np.zeros(d), np.ones(d), "none"
    if scale == "auto" and all(p["uint8"] for p in parts):
        return np.zeros(d), np.full(d, 1 / 255), "divided by 255"
    if scale in ("auto", "standardize"):
        count, mean, m2 = 0, np.zeros(d), np.zeros(d)
        for p in parts:
            count, mean, m2 = _merge_moments((count, mean, m2), (p["count"], p["mean"], p["m2"]))
        std = np.sqrt(m2 / count)
        std[std == 0] = 1
        return mean, 1 / std, "standardized (train mean/std)"
    low = np.min([p["low"] for p in parts], axis=0)
    high = np.max([p["high"] for p in parts], axis=0)
    span = high - low
    span[span == 0] = 1
    return low, 1 / span, "min-max to [0, 1] (train min/max)"


def _chunks(X: np.ndarray, index: np.ndarray | None):
    """The training rows of X as float64 chunks, reading a memmap a chunk at a time."""
    n = len(X) if index is None else len(index)
    step = max(1, CHUNK_ELEMENTS // X.shape[1])
    for start in range(0, n, step):
        rows = slice(start, start + step) if index is None else index[start : start + step]
        yield np.asarray(X[rows], dtype=np.float64)


def _moments(X: np.ndarray, index: np.ndarray | None) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, m2: the sum of squared deviations from the mean) of the rows, per feature."""
    # chunk means and squared deviations merged pairwise (Chan et al.), stable for large offsets.
    moments = (0, np.zeros(X.shape[1]), np.zeros(X.shape[1]))
    for chunk in _chunks(X, index):
        chunk_mean = chunk.mean(axis=0)
        moments = _merge_moments(moments, (len(chunk), chunk_mean, ((chunk - chunk_mean) ** 2).sum(axis=0)))
    return moments


def _merge_moments(a: tuple, b: tuple) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean, m2) of two row sets together from each one's (Chan et al.)."""
    (count, mean, m2), (n, b_mean, b_m2) = a, b
    delta = b_mean - mean
    total = count + n
    return total, mean + delta * (n / total), m2 + (b_m2 + delta**2 * (count * n / total))


def _min_max(X: np.ndarray, index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)
    for chunk in _chunks(X, index):
        np.minimum(low, chunk.min(axis=0), out=low)
        np.maximum(high, chunk.max(axis=0), out=high)
    return low, high
