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
Errors are `distbp.DistbpError`s raised on every rank alike (a bad value on one rank stops all of them).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.comm.mpi import world
from distbp.config import Config, from_values
from distbp.data.datasets import from_arrays
from distbp.errors import ConfigError, DistbpError
from distbp.host import threads
from distbp.nn.model import MLP
from distbp.train.job import run_job

FROM_MODEL = ("layers", "activation", "loss", "dtype")  # Config fields the model decides
ARRAYS = "arrays"  # cfg.data of in-memory rows


def fit(model: MLP, X: np.ndarray | None = None, y: np.ndarray | None = None, *,
        validation: tuple[np.ndarray, np.ndarray] | float | None = None, data: str | None = None,
        callback: Callable[[dict], object] | None = None, callback_every: int = 0, verbose: bool = True,
        comm: Comm | None = None, **options) -> list[dict]:
    """Train `model` in place, data-parallel over the MPI ranks; returns the metrics records (--metrics).

    X (rows, features), y (rows,) integer labels 0…K−1 or (rows, targets) float targets: rows every
    rank holds (each rank computes its share of every global batch); or `data`, any data spec of
    `distbp train --data` (a built-in name or a path) instead of X and y.
    validation: (X_val, y_val) held out and evaluated after every epoch, or a fraction of X's rows to
    hold out (the CLI's --test-fraction); None: no held-out rows (with `data`, the CLI's rules).
    callback(record): called on every rank after each epoch with its metrics, and every callback_every
    steps with a step record (epoch, step, running train_loss/train_accuracy); a true return stops
    training. verbose=False: the root prints nothing (warnings still go to stderr).
    comm: the ranks to train over (default: MPI's COMM_WORLD, or one process without mpi4py).
    options: `distbp.Config` fields (epochs, batch_size, optimizer, lr, lr_scale, seed, checkpoint_dir,
    resume, save, metrics, shard_optimizer, accumulate, reproducible, …).
    """
    started = time.monotonic()
    if comm is None:
        comm = world()
    err, cfg, dataset = None, None, None
    try:
        cfg, dataset = _prepare(model, X, y, validation, data, callback_every, verbose, options)
    except (DistbpError, ValueError, TypeError) as e:
        err = e if isinstance(e, DistbpError) else ConfigError(str(e))
    comm.agree_on_failure(err)  # [dist] a bad argument on any rank stops every rank, with the same error

    quiet = contextlib.redirect_stdout(open(os.devnull, "w")) if not verbose else contextlib.nullcontext()
    with quiet as sink:
        try:
            run = run_job(cfg, comm, started=started, dataset=dataset, initial=model.flat_params,
                          callback=callback, callback_every=callback_every)
        finally:
            if sink is not None:
                sink.close()
    # the trained model, and what it learnt about the data, back into the caller's object
    model.flat_params[...] = run.model.flat_params
    model.feature_offset, model.feature_factor = run.model.feature_offset, run.model.feature_factor
    return run.history


def _prepare(model: MLP, X, y, validation, data: str | None, callback_every: int, verbose: bool,
             options: dict) -> tuple[Config, Callable | None]:
    """The run's configuration and, for in-memory rows, a loader of their dataset (called inside set-up,
    where the ranks agree on its errors)."""
    if not isinstance(model, MLP):
        raise ConfigError(f"model must be a distbp.MLP, got {type(model).__name__}")
    given = sorted(k for k in FROM_MODEL + ("data",) if k in options)
    if given:
        raise ConfigError(f"{', '.join(given)}: set by the model (and X, y or data=), not as options")
    if (data is None) == (X is None):
        raise ConfigError("give either X and y (arrays) or data= (a data spec), not both")
    if X is not None and y is None:
        raise ConfigError("X needs y: the labels (rows,) or targets (rows, k)")
    if not (isinstance(callback_every, int) and callback_every >= 0):
        raise ConfigError(f"callback_every must be a non-negative integer, got {callback_every!r}")
    names = model.activation_names
    values = dict(options)
    values.update(layers=list(model.sizes), loss=model.loss.name, dtype=model.dtype.name,
                  activation=(names[0] if len(set(names)) == 1 else ",".join(names)) if names else "sigmoid",
                  data=ARRAYS if data is None else data)
    if not verbose:
        values.setdefault("progress", "none")
    held_out = isinstance(validation, float)
    if data is not None and validation is not None:
        raise ConfigError("validation= goes with X and y; with data=, the data spec's test split is used "
                          "(or test_fraction=)")
    if held_out:
        values["test_fraction"] = validation
    values["threads"] = threads.choose_threads(options.get("threads"))[0]
    cfg = from_values(values, "distbp.fit")
    threads.set_threads(cfg.threads)  # numpy is loaded already: the pools are resized now
    if data is not None:
        return cfg, None
    pair = None if held_out else validation
    return cfg, lambda: from_arrays(X, y, pair, name=ARRAYS, seed=cfg.seed,
                                    test_fraction=cfg.test_fraction if held_out else 0.0, scale=cfg.scale)
