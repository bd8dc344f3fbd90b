"""Labels and targets: what a dataset's y means to the loss that trains on it (see docs/data.md).

Every loader hands its raw y (and y_test) to `prepare` with the kind that its loss asks for:

- "classes" (cross_entropy): one label per row (integers, whole-number floats or strings) as a class number
  0…K−1 through `classes`, the sorted set of all labels (train and test together). Integer labels that are
  exactly 0…K−1 stay as they are (classes None: today's runs keep their bits). A label set that looks like a
  continuous target is refused with a hint to use mse.
- "multilabel" (binary_cross_entropy): a (rows, k) 0/1 matrix as float64; or one column of exactly two labels
  as (rows, 1) 0/1, the second of the two sorted labels being 1 (classes: the two labels; None for 0/1).
- "values" (mse on a file): float targets (rows, k) float64; integers are values, never classes.
- "auto": integer labels (rows,) as class numbers 0…largest (mapped through `classes` only where that would
  make a huge output layer), strings as classes, float (rows, k) as values.

`given` classes (a model's): labels map through them instead, and a label not among them is an error.
Pure numpy, no I/O: the ranks of --local-rows redo the same decision on their merged labels (`class_set`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("auto", "classes", "multilabel", "values")
SCALE_TARGETS = ("none", "standardize")
# a classification whose labels number at least MANY_LABELS, with fewer than FEW_ROWS rows per label on average,
# looks like a continuous target (diabetes: 214 distinct whole-number targets over 442 rows)
MANY_LABELS = 50
FEW_ROWS = 5
# auto's rule of today: integer labels are class numbers 0…largest unless that makes this many outputs
# (and ten times the labels): one stray label would cost millions of outputs, so such labels map instead
AUTO_OUTPUTS = 1000


@dataclass(frozen=True)
class Hints:
    """How an error says what to use instead: the command line's flags, or the Python keywords."""

    mse: str  # regression; "{column}" stands for the target column(s)
    bce: str  # multilabel / binary
    ce: str  # one class per row


FLAGS = Hints(mse="--loss mse --targets {column}", bce="--loss binary_cross_entropy", ce="--loss cross_entropy")
KEYWORDS = Hints(mse='loss="mse"', bce='loss="binary_cross_entropy"', ce='loss="cross_entropy"')


@dataclass
class Labels:
    """y as the loss takes it: (rows,) int64 class numbers, or (rows, k) float64 (0/1 for multilabel)."""

    y: np.ndarray
    y_test: np.ndarray | None
    n_classes: int | None  # classes: outputs one per class number; None for multilabel and values
    classes: np.ndarray | None  # (n_classes,) the labels class numbers stand for, or a multilabel's names
    multilabel: bool


def prepare(y: np.ndarray, y_test: np.ndarray | None, *, kind: str, where: str, names: tuple[str, str],
            given: np.ndarray | None = None, known: int | None = None, columns: list[str] | None = None,
            hints: Hints = FLAGS, outputs: int | None = None) -> Labels:
    """y (and y_test) of a source for the loss's `kind` (module docstring).

    where: the source (file or name) for errors; names: what to call y and y_test in errors; given: classes
    to map through (a model's); known: a built-in set's class count (its labels are class numbers already);
    columns: the names of y's columns (a CSV's target columns, an .npz's members), for hints and for the
    names of a multilabel's outputs. outputs: the run's output layer, when it is given (--layers): integer
    labels that all fit it are its class numbers as they are (a data set may lack a class).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if given is not None:
        given = plain(np.asarray(given))
        if given.ndim != 1 or given.dtype.kind not in "iufUS":
            raise ValueError(f"classes must be a 1-D array of numbers or strings, got {given.dtype} {given.shape}")
    column = ",".join(columns) if columns else "COLUMN"
    hint = Hints(hints.mse.format(column=column), hints.bce, hints.ce)
    arrays = [(a, name) for a, name in ((y, names[0]), (y_test, names[1])) if a is not None]
    if y_test is not None and _width(y) != _width(y_test):
        _check_match([np.empty((0, 1)), np.empty((0, 2))], arrays, where)  # raises, naming both
    if kind == "values":
        if given is not None:
            raise ValueError(f"{where}: classes name class labels, and float targets (kind 'values') have none")
        out = [_values(a, name, hint) for a, name in arrays]
        _check_match(out, arrays, where)
        return Labels(out[0], out[1] if len(out) > 1 else None, None, None, False)
    if kind == "multilabel":
        return _multilabel(arrays, where, given, columns, hint)
    if kind == "auto" and not _one_label_per_row(y):
        out = [_auto_targets(a, name, hint) for a, name in arrays]
        _check_match(out, arrays, where)
        if given is not None:
            raise ValueError(f"{where}: classes name class labels, and float targets (rows, k) have none")
        return Labels(out[0], out[1] if len(out) > 1 else None, None, None, False)
    return _classes(arrays, kind, where, given, known, hint, outputs)


# ---------------------------------------------------------------- one class per row


def _classes(arrays: list, kind: str, where: str, given, known: int | None, hint: Hints,
             outputs: int | None = None) -> Labels:
    labels = [_labels(a, name, kind, hint) for a, name in arrays]
    _check_match(labels, arrays, where)
    if given is not None:
        numbers = [through(a, given, name) for a, (_, name) in zip(labels, arrays)]
        return Labels(numbers[0], numbers[1] if len(numbers) > 1 else None, len(given), given, False)
    values = np.unique(np.concatenate(labels)) if len(labels) > 1 else np.unique(labels[0])
    rows = sum(len(a) for a in labels)
    classes = None if known is not None else class_set(values, kind, rows, where, hint, outputs)
    numbers = [renumber(a, None, classes) for a in labels]
    n_classes = len(classes) if classes is not None else max(known or 0, int(values[-1]) + 1)
    return Labels(numbers[0], numbers[1] if len(numbers) > 1 else None, n_classes, classes, False)


def class_set(values: np.ndarray, kind: str, rows: int, where: str, hints: Hints = FLAGS,
              outputs: int | None = None) -> np.ndarray | None:
    """The classes that class numbers 0…K−1 stand for, given the sorted distinct labels `values` of all `rows`
    rows (train and test): None when the labels are class numbers already (integers exactly 0…K−1; integers in
    0…outputs−1 when the run's output layer is given; for kind auto, any non-negative integers that make a
    plausible output layer), else `values` themselves.

    Raises when a classification's labels look like a continuous target (non-integer floats, or at least
    MANY_LABELS labels with fewer than FEW_ROWS rows each on average)."""
    if values.dtype.kind in "US":
        return values
    if values.dtype.kind == "f":
        fraction = values[values != np.round(values)]
        if fraction.size:
            raise ValueError(f"{where}: non-integer labels (e.g. {fraction[0]:g}) look like a continuous target, "
                             f"not classes; for regression use {hints.mse}")
    elif values[0] == 0 and values[-1] == len(values) - 1:
        return None  # exactly 0…K−1
    elif outputs is not None and values[0] >= 0 and values[-1] < outputs:
        return None  # class numbers of the output layer the run was given
    elif kind == "auto" and values[0] >= 0 and values[-1] + 1 <= max(AUTO_OUTPUTS, 10 * len(values)):
        return None  # today's rule: class numbers 0…largest
    if kind != "auto" and len(values) >= MANY_LABELS and rows < FEW_ROWS * len(values):
        raise ValueError(f"{where}: {len(values)} distinct labels over {rows} rows ({rows / len(values):.1f} per "
                         f"label) look like a continuous target, not classes; for regression use {hints.mse}")
    return values


def renumber(y: np.ndarray, mine: np.ndarray | None, classes: np.ndarray | None) -> np.ndarray:
    """Class numbers (rows,) int64 for `classes` of labels y: y themselves (class numbers through `mine`, the
    classes they were numbered for, when not None), all of which `classes` holds."""
    values = y if mine is None else mine[y]
    if classes is None:
        return values.astype(np.int64)
    return np.searchsorted(classes, values).astype(np.int64)


def through(y: np.ndarray, classes: np.ndarray, name: str) -> np.ndarray:
    """Class numbers (rows,) int64 of labels y through given classes (any order: a model's); a label that the
    classes do not hold is one error naming it and them."""
    if (y.dtype.kind in "US") != (classes.dtype.kind in "US"):
        raise ValueError(f"{name}: the labels are {_what(y)}, the model's classes are {_what(classes)} "
                         f"({show(classes)})")
    if y.dtype.kind != classes.dtype.kind and y.dtype.kind in "US":  # bytes against text: compare as text
        y, classes = y.astype(str), classes.astype(str)
    order = np.argsort(classes, kind="stable")
    at = order[np.searchsorted(classes, y, sorter=order).clip(max=len(classes) - 1)]
    unknown = classes[at] != y
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"{name}: label {y[row].item()!r} (row {row}) is not one of the model's classes "
                         f"{show(classes)}")
    return at.astype(np.int64)


def _labels(y: np.ndarray, name: str, kind: str, hint: Hints) -> np.ndarray:
    """One label per row (rows,) in memory: int64, float64 (whole or not: `class_set` decides) or text."""
    y = plain(np.asarray(y))
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"{name}: {y.shape[1]} target columns, and cross_entropy takes one class per row: several "
                         f"columns are multilabel 0/1 targets ({hint.bce}) or regression targets ({hint.mse})")
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must hold one label per row (rows,), got shape {y.shape}")
    y = y.reshape(-1)
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind in "iu":
        y = y.astype(np.int64)
        if kind == "auto" and (y < 0).any():
            first = int(np.flatnonzero(y < 0)[0])
            raise ValueError(f"{name}: negative label {y[first]} in row {first}")
        return y
    if y.dtype.kind == "f":
        if kind == "auto":
            raise ValueError(f"{name}: non-integer labels (dtype {y.dtype}); store class labels as integers, "
                             f"or regression targets as a 2-D float array (rows, targets)")
        _check_finite(y, name)
        return np.array(y, np.float64)
    if y.dtype.kind in "US":
        return np.array(y)
    raise ValueError(f"{name} must hold class labels (numbers or strings), got dtype {y.dtype}")


def _one_label_per_row(y: np.ndarray) -> bool:
    """auto's test: (rows,) or (rows, 1) of integers, booleans or text are class labels; the rest are targets."""
    y = np.asarray(y)
    return (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) and (y.dtype.kind in "iuUS" or _text(y))


def _auto_targets(y: np.ndarray, name: str, hint: Hints) -> np.ndarray:
    """auto's float targets (rows, k) (today's rules), with the error of today for the rest."""
    y = np.asarray(y)
    if y.dtype.kind == "f" and y.ndim == 2:
        _check_finite(y, name)
        return np.array(y)  # a copy, so that targets are in memory even if y is a memmap
    if y.dtype.kind == "f" and y.ndim == 1:
        raise ValueError(f"{name}: non-integer labels (dtype {y.dtype}); store class labels as integers, "
                         f"or regression targets as a 2-D float array (rows, targets)")
    if y.dtype.kind in "iub" and y.ndim == 2:
        raise ValueError(f"{name} must be integer labels (rows,) or float targets (rows, k), got {y.dtype} "
                         f"{y.shape}: for multilabel 0/1 targets use {hint.bce}")
    raise ValueError(f"{name} must be integer labels (rows,) or float targets (rows, k), got {y.dtype} {y.shape}")


# ---------------------------------------------------------------- multilabel and binary


def _multilabel(arrays: list, where: str, given, columns: list[str] | None, hint: Hints) -> Labels:
    ys = [np.asarray(a) for a, _ in arrays]
    if all(a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1) for a in ys):
        return _binary(arrays, where, given, hint)
    out = [_zero_one(a, name) for a, name in arrays]
    _check_match(out, arrays, where)
    k = out[0].shape[1]
    if given is not None and len(given) != k:
        raise ValueError(f"{where}: {k} target columns, and the model's classes name {len(given)} outputs "
                         f"({show(given)})")
    classes = given if given is not None else (np.array(columns) if columns and len(columns) == k else None)
    return Labels(out[0], out[1] if len(out) > 1 else None, None, classes, True)


def _binary(arrays: list, where: str, given, hint: Hints) -> Labels:
    """One column of labels as (rows, 1) 0/1: 0/1 numbers as they are, two labels through their sorted pair."""
    labels = [_labels(a, name, "multilabel", hint) for a, name in arrays]
    _check_match(labels, arrays, where)
    if given is not None:
        if len(given) != 2:
            raise ValueError(f"{where}: one label column, and the model's classes name {len(given)} outputs "
                             f"({show(given)})")
        numbers, classes = [through(a, given, name) for a, (_, name) in zip(labels, arrays)], given
    else:
        values = np.unique(np.concatenate(labels))
        if values.dtype.kind not in "US" and set(values.tolist()) <= {0, 1}:
            numbers, classes = labels, None
        elif len(values) == 2:
            numbers, classes = [np.searchsorted(values, a) for a in labels], values
        elif len(values) > 2:
            raise ValueError(f"{where}: {len(values)} labels in one column ({show(values)}); binary_cross_entropy "
                             f"takes 0/1 targets (rows, k) or one column of two labels; for one class per row "
                             f"use {hint.ce}")
        else:
            raise ValueError(f"{where}: one label column holding only {values[0].item()!r}; a binary target needs "
                             "two labels (or 0/1)")
    out = [a.astype(np.float64).reshape(-1, 1) for a in numbers]
    return Labels(out[0], out[1] if len(out) > 1 else None, None, classes, True)


def _zero_one(y: np.ndarray, name: str) -> np.ndarray:
    """(rows, k) 0/1 of bool, integers or floats exactly 0/1, as float64."""
    y = np.asarray(y)
    if y.ndim != 2 or y.dtype.kind not in "biuf":
        raise ValueError(f"{name}: multilabel targets are a 0/1 matrix (rows, k) of numbers, got {y.dtype} {y.shape}")
    y = np.array(y, np.float64)
    bad = (y != 0) & (y != 1)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: multilabel targets must be 0 or 1; row {row}, column {col} holds {y[row, col]:g} "
                         f"({int(bad.sum())} such value(s))")
    return y


# ---------------------------------------------------------------- regression targets


def _values(y: np.ndarray, name: str, hint: Hints) -> np.ndarray:
    """Float targets (rows, k) float64 in memory; (rows,) is one target."""
    y = plain(np.asarray(y))
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name}: regression targets must be numbers, got dtype {y.dtype}; class labels need "
                         f"{hint.ce}")
    if y.ndim not in (1, 2):
        raise ValueError(f"{name}: regression targets are (rows,) or (rows, k), got shape {y.shape}")
    y = np.array(y, np.float64).reshape(len(y), -1)
    _check_finite(y, name)
    return y


# ---------------------------------------------------------------- helpers


def plain(a: np.ndarray) -> np.ndarray:
    """An object array (as pandas holds labels) of all strings or all numbers as a plain one; else a unchanged."""
    if a.dtype != object or a.size == 0:
        return a
    values = a.ravel().tolist()
    if all(isinstance(v, str) for v in values) or all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values):
        return np.array(values).reshape(a.shape)
    return a


def _width(a) -> tuple:
    """How many columns a y has, (rows,) and (rows, 1) alike."""
    shape = np.shape(a)
    return (1,) if len(shape) == 1 else shape[1:]


def _text(a: np.ndarray) -> bool:
    return a.dtype == object and plain(a).dtype.kind in "US"


def _check_match(out: list[np.ndarray], arrays: list, where: str) -> None:
    """y_test must be what y is: labels of the same type, or targets of the same width."""
    if len(out) < 2:
        return
    (y, _), (y_test, _) = arrays
    a, b = out
    if a.shape[1:] != b.shape[1:] or (a.dtype.kind in "US") != (b.dtype.kind in "US"):
        raise ValueError(f"{where}: y_test ({np.asarray(y_test).dtype} {np.shape(y_test)}) does not match y "
                         f"({np.asarray(y).dtype} {np.shape(y)})")


def _check_finite(y: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(y)
    if bad.any():
        row = int(np.flatnonzero(bad.reshape(len(y), -1).any(axis=1))[0])
        raise ValueError(f"{name} has {int(bad.sum())} NaN or Inf values; the first is in row {row}")


def _what(a: np.ndarray) -> str:
    return "strings" if a.dtype.kind in "US" else "numbers"


def show(classes: np.ndarray, most: int = 12) -> str:
    """The first `most` labels of classes, for an error."""
    values = classes.tolist()
    return "[" + ", ".join(map(repr, values[:most])) + (", …" if len(values) > most else "") + "]"
