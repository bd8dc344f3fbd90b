"""Training from Python: `distbp.fit(model, X, y, …)`, data-parallel under MPI, with the CLI's guarantees.

    import distbp
    model = distbp.MLP([64, 128, 10], activation="relu", loss="cross_entropy")
    history = distbp.fit(model, X, y, validation=(X_val, y_val), epochs=20, batch_size=256,
                         optimizer="adam", lr=1e-3, lr_scale="mean", checkpoint_dir="ck")

The same script runs as one process or as `mpirun -n P python -m mpi4py script.py`. The keywords are the
fields of `distbp.Config` (the flags of `distbp train`, with underscores), checked as the CLI checks them;
the model gives the layers, activations, loss, dtype and the starting parameters. Every rank ends with
the same trained parameters in `model`, and `fit` returns the metrics records (the `--metrics` lines: one
per epoch, and one per mid-epoch evaluation with `eval_every`).
Errors are `distbp.DistbpError`s raised on every rank alike (a bad value on one rank stops all of them); a bad
argument is a `distbp.ConfigError`, which is also a ValueError. NumPy's scalars are numbers (np.int64(3) is an
integer option, np.float32(0.01) a float one); bools are not.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import time
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.comm.mpi import world
from distbp.config import Config, from_values
from distbp.data.datasets import check_weights, from_arrays
from distbp.errors import ConfigError, DistbpError
from distbp.host import numbacache, threads
from distbp.nn import kernels
from distbp.nn.model import MLP
from distbp.train.job import run_job
from distbp.train.kept import KeptJob

FROM_MODEL = ("layers", "activation", "loss", "output_activation", "dtype")  # Config fields the model decides
ARRAYS = "arrays"  # cfg.data of in-memory rows


def fit(model: MLP, X: np.ndarray | None = None, y: np.ndarray | None = None, *,
        validation: tuple[np.ndarray, np.ndarray] | float | None = None, data: str | None = None,
        callback: Callable[[dict], object] | None = None, callback_every: int = 0, verbose: bool = True,
        comm: Comm | None = None, sample_weight: np.ndarray | None = None,
        class_weight: str | dict | None = None, optimizer_state: dict | None = None, keep: KeptJob | None = None,
        **options) -> list[dict]:
    """Train `model` in place, data-parallel over the MPI ranks; returns the metrics records (--metrics).

    X (rows, features), y: rows every rank holds (each rank computes its share of every global batch), what
    the model's loss takes: for cross_entropy (rows,) class labels (integers 0…K−1, or any numbers or strings,
    which map through their sorted set, kept in model.classes); for binary_cross_entropy a 0/1 matrix (rows,
    labels), or (rows,) of two labels with one output; for mse (rows, targets) float targets (scale_targets=
    "standardize" trains on standardized targets and model.predict undoes it). Or `data`, any data spec of
    `distbp train --data` (a built-in name or a path) instead of X and y.
    validation: (X_val, y_val) held out and evaluated after every epoch, or a fraction of X's rows to
    hold out (the CLI's --test-fraction); None: no held-out rows (with `data`, the CLI's rules).
    (X_val, y_val, w_val) gives the held-out rows weights too.
    sample_weight (rows,): wₙ in the summed loss L = Σₙ wₙ lⁿ (finite, >= 0; 0 leaves a row out), riding
    with its row through every split and layout; with lr_scale="mean" the step divides by the batch's Σ wₙ.
    class_weight: "balanced" (wₙ = rows / (classes · rows of n's class), scikit-learn's rule, over all of y)
    or {label: weight} (1 for the labels not named), multiplied into sample_weight; integer labels only.
    The records' losses and accuracies are then weighted means ("weighted": True).
    optimizer_state: a dict; the optimizer continues from the state it holds (if any: momentum's velocity, Adam's
    moments and step count, as a next call of one long run would), and fit writes the final state into it, so
    that calls over successive chunks of data train as one run (streaming, the estimators' partial_fit).
    callback(record): called on every rank after each epoch with its metrics, and every callback_every
    steps with a step record (epoch, step, running train_loss/train_accuracy); it returns True to stop
    training, else False or None (anything else stops it with a ConfigError naming it).
    verbose=False: the root prints nothing (warnings still go to stderr).
    comm: the ranks to train over (default: MPI's COMM_WORLD, or one process without mpi4py).
    keep: a `distbp.KeptJob` that streaming calls share (with optimizer_state): in one process, with in-memory
    rows and no files, the job set up by one call goes on in the next while their options differ in the seed
    at most and the call hands back the optimizer state the last one left (the same results, without a set-up
    per call; see `distbp.train.kept`); otherwise the call is a whole job. `keep.close()` ends the kept job.
    options: `distbp.Config` fields (epochs, batch_size, optimizer, lr, lr_scale, seed, checkpoint_dir,
    resume, save, metrics, shard_optimizer, accumulate, reproducible, …).
    """
    started = time.monotonic()
    kernels.refuse_after_fork("distbp.fit")  # before MPI or a kernel is touched in a forked worker
    if comm is None:
        comm = world()
    # before any kernel loads from the Numba cache: nothing another user planted there is unpickled
    numbacache.check_loaded(is_root=comm.rank == 0)
    err, cfg, dataset = None, None, None
    try:
        if optimizer_state is not None and not isinstance(optimizer_state, dict):
            raise ConfigError(f"optimizer_state must be a dict (empty at first), got {_what(optimizer_state)}")
        if keep is not None and not isinstance(keep, KeptJob):
            raise ConfigError(f"keep must be a distbp.KeptJob, got {_what(keep)}")
        cfg, dataset = _prepare(model, X, y, validation, data, callback, callback_every, verbose, options,
                                sample_weight, class_weight)
    except (DistbpError, ValueError, TypeError) as e:
        err = e if isinstance(e, DistbpError) else ConfigError(str(e))
    _agree_on_arguments(comm, err)  # [dist] a bad argument on any rank stops every rank, with the same error

    checked = None if callback is None else CheckedCallback(callback)
    quiet = contextlib.redirect_stdout(open(os.devnull, "w")) if not verbose else contextlib.nullcontext()
    with quiet as sink:
        try:
            if keep is not None and KeptJob.keeps(cfg, comm, optimizer_state):
                run = keep.run(cfg, comm, dataset, model.flat_params, started=started, callback=checked,
                               callback_every=int(callback_every), optimizer_state=optimizer_state)
            else:
                if keep is not None:
                    keep.close()  # this call is a whole job: the kept one ends
                run = run_job(cfg, comm, started=started, dataset=dataset, initial=model.flat_params,
                              callback=checked, callback_every=int(callback_every), optimizer_state=optimizer_state)
        finally:
            if sink is not None:
                sink.close()
    if checked is not None:
        # [dist] a callback that returned something other than a bool stopped the run on every rank (the
        # loop agrees on stopping); every rank now raises, the same error
        _agree_on_arguments(comm, checked.error)
    # the trained model, and what it learnt about the data, back into the caller's object
    model.flat_params[...] = run.model.flat_params
    model.feature_offset, model.feature_factor = run.model.feature_offset, run.model.feature_factor
    # the labels the outputs stand for and the targets' scaling, when the data gave them (kept otherwise: a
    # caller's classes, as the estimators set them, stay)
    if run.model.classes is not None:
        model.classes = run.model.classes
    if run.model.target_offset is not None:
        model.target_offset, model.target_factor = run.model.target_offset, run.model.target_factor
    return run.history


def _agree_on_arguments(comm: Comm, err: DistbpError | None) -> None:
    """[dist] Raise err, or another rank's, on every rank: a ConfigError (also a ValueError, as scikit-learn's
    tools expect of a bad parameter). One process raises err itself, with no "rank 0:" before its message."""
    if comm.size == 1:
        if err is not None:
            raise err
        return
    try:
        comm.agree_on_failure(err)
    except DistbpError as agreed:
        raise ConfigError(str(agreed)) from err


class CheckedCallback:
    """The caller's callback, its return value checked: None or a bool (numpy's too); anything else (an array,
    whose truth is ambiguous) stops the run and is kept in `error`, a ConfigError naming the callback."""

    def __init__(self, callback: Callable[[dict], object]):
        self.callback, self.error = callback, None

    def __call__(self, record: dict) -> bool:
        answer = self.callback(record)
        if answer is None or isinstance(answer, (bool, np.bool_)):
            return bool(answer)
        name = getattr(self.callback, "__qualname__", None) or type(self.callback).__name__
        self.error = ConfigError(f"callback {name} returned {_what(answer)}: it must return a bool (True stops "
                                 "training) or None")
        return True  # stop, on every rank (the loop agrees on stopping); fit raises self.error


def _check_rows(a, what: str, shape: str) -> None:
    """ConfigError unless `a` is an array (or a nested sequence) of at least one dimension: a scalar has no rows."""
    try:
        ndim = np.ndim(a)
    except (TypeError, ValueError) as e:  # ragged lists
        raise ConfigError(f"{what} is not an array: {e}") from None
    if ndim == 0:
        raise ConfigError(f"{what} must be an array {shape}, got {_what(a)} ({a!r:.40})")


def _what(value) -> str:
    """A short description of a value: its type, and its shape for an array."""
    kind, shape = type(value).__name__, getattr(value, "shape", None)
    article = "an" if kind[0] in "aeiou" or kind == "ndarray" else "a"
    return f"{article} {kind}" + (f" of shape {shape}" if shape is not None else "")


def _prepare(model: MLP, X, y, validation, data: str | None, callback, callback_every: int, verbose: bool,
             options: dict, sample_weight=None, class_weight=None) -> tuple[Config, Callable | None]:
    """The run's configuration and, for in-memory rows, a loader of their dataset (called inside set-up,
    where the ranks agree on its errors)."""
    if not isinstance(model, MLP):
        raise ConfigError(f"model must be a distbp.MLP, got {type(model).__name__}")
    given = sorted(k for k in FROM_MODEL + ("data",) if k in options)
    if given:
        raise ConfigError(f"{', '.join(given)}: set by the model (and X, y or data=), not as options")
    if X is None and y is not None and data is None:
        raise ConfigError("y needs X: the rows (rows, features) whose labels or targets y holds")
    if (data is None) == (X is None):
        raise ConfigError("give either X and y (arrays) or data= (a data spec), not both")
    if X is not None and y is None:
        raise ConfigError("X needs y: the labels (rows,) or targets (rows, k)")
    if X is not None:
        _check_rows(X, "X", "(rows, features)")
        _check_rows(y, "y", "of labels (rows,) or targets (rows, k)")
    if (sample_weight is not None or class_weight is not None) and X is None:
        raise ConfigError("sample_weight and class_weight go with X and y; a data spec brings its own weights "
                          "(a w member of an .npz, w.npy in a folder, --weights COLUMN of a CSV)")
    if isinstance(validation, (tuple, list)) and len(validation) in (2, 3):
        _check_rows(validation[0], "validation's X_val", "(rows, features)")
        _check_rows(validation[1], "validation's y_val", "of labels (rows,) or targets (rows, k)")
    if not (isinstance(callback_every, numbers.Integral) and not isinstance(callback_every, (bool, np.bool_))
            and callback_every >= 0):
        raise ConfigError(f"callback_every must be a non-negative integer, got {callback_every!r}")
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be a function of the metrics record, got {_what(callback)}")
    names = model.activation_names
    values = dict(options)
    values.update(layers=list(model.sizes), loss=model.loss.name, output_activation=model.loss.output_activation,
                  dtype=model.dtype.name,
                  activation=(names[0] if len(set(names)) == 1 else ",".join(names)) if names else "sigmoid",
                  data=ARRAYS if data is None else data)
    if not verbose:
        values.setdefault("progress", "none")
    held_out = isinstance(validation, numbers.Real) and not isinstance(validation, (bool, np.bool_))
    if data is not None and validation is not None:
        raise ConfigError("validation= goes with X and y; with data=, the data spec's test split is used "
                          "(or test_fraction=)")
    if held_out:
        values["test_fraction"] = validation
    cfg = from_values(values, "distbp.fit")  # threads checked as the command line's --threads (at least 1)
    n, source = threads.requested_threads(cfg.threads)
    if cfg.threads is not None or source != threads.DEFAULT_SOURCE:  # asked for: that, capped at the cores
        cfg.threads = threads.choose_threads(cfg.threads)[0]
        threads.set_threads(cfg.threads)  # numpy is loaded already: the pools are resized now
    # else None: set-up takes distbp's default, or 1 for a small step (train.setup.settle_threads)
    if data is not None:
        return cfg, None
    pair = None if held_out else validation
    weights = row_weights(y, sample_weight, class_weight)
    if weights is not None:  # checked here, where a bad weight is a bad argument (a ValueError, as scikit-learn's)
        try:
            weights = check_weights(np.asarray(weights), len(X), "sample_weight")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    # what y is for the model's loss: a 0/1 matrix (or two labels) for binary cross-entropy; else today's rule for
    # arrays ("auto": integers are class numbers, as the model's outputs are fixed already; strings map through
    # their sorted set; float (rows, k) are targets), through the model's own classes when it names them (a
    # fit after a fit maps the labels as the first did)
    kind = "multilabel" if cfg.loss == "binary_cross_entropy" else "auto"
    return cfg, lambda: from_arrays(X, y, pair, name=ARRAYS, seed=cfg.seed,
                                    test_fraction=cfg.test_fraction if held_out else 0.0, scale=cfg.scale,
                                    sample_weight=weights, kind=kind, scale_targets=cfg.scale_targets,
                                    classes=model.classes)


def row_weights(y, sample_weight=None, class_weight: str | dict | None = None) -> np.ndarray | None:
    """Each row's weight: sample_weight (rows,) times its class's weight (class_weight "balanced" or
    {label: weight}); None when neither is given. Raises ConfigError for what cannot be weights."""
    if class_weight is None:
        if sample_weight is None:
            return None
        _check_rows(sample_weight, "sample_weight", "of one weight per row (rows,)")
        return np.asarray(sample_weight)
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ConfigError(f"class_weight needs integer class labels y (rows,), got {labels.dtype} {labels.shape}")
    classes, index, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if isinstance(class_weight, str) and class_weight == "balanced":
        per_class = len(labels) / (len(classes) * counts.astype(np.float64))
    elif isinstance(class_weight, dict):
        unknown = sorted(set(class_weight) - set(classes.tolist()), key=str)
        if unknown:
            raise ConfigError(f"class_weight names label(s) {unknown} that y does not hold "
                              f"(its labels: {classes.tolist()})")
        per_class = np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
    else:
        raise ConfigError(f'class_weight must be "balanced" or a dict {{label: weight}}, got {class_weight!r}')
    weights = per_class[index]
    if sample_weight is not None:
        _check_rows(sample_weight, "sample_weight", "of one weight per row (rows,)")
        given = np.asarray(sample_weight, np.float64)
        if given.shape != weights.shape:
            raise ConfigError(f"sample_weight must hold one weight per row ({len(weights)},), got {given.shape}")
        weights = weights * given
    return weights
