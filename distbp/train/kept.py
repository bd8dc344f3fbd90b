"""A job kept between calls of one process (`KeptJob`): the streaming calls of `distbp.fit` (the estimators'
partial_fit) pay the set-up once.

A call of `distbp.fit` is a whole job: set-up (the model's buffers, the strategy with its communicators and
optimizer, the batch buffers), the kernels loaded, training, shut-down. A caller that streams chunks of rows,
one call a chunk, pays all of it for every chunk. A `KeptJob` keeps the set-up run between calls while their
configurations differ in the seed only: the next call brings its rows, starting parameters and optimizer state
into the run (`distbp.train.setup.renew`) and trains exactly as a new job would (the same bits: the same plan,
schedule, dropout masks and optimizer state).

Kept in one process only: under MPI a kept job would hold its ranks between calls, with nothing to bound the
wait of a rank whose caller stopped calling. A job that writes files (checkpoints, model files, metrics, a
trace) or reads its rows itself (a data spec, local rows) is not kept either: those are whole jobs.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data.datasets import ARRAYS, Dataset
from distbp.train.job import abandon_job, end_job, start_job, train_job
from distbp.train.loop import Callback
from distbp.train.run import Run
from distbp.train.setup import renew

# the options a kept job may not have: each writes a file, reads one, or makes the job its own
WHOLE_JOB = ("init_from", "local_rows", "save", "metrics", "tensorboard", "trace", "save_best", "checkpoint_dir",
             "resume", "dry_run")
MAY_CHANGE = ("seed",)  # what may differ between the calls of one kept job


class KeptJob:
    """The run of the last call, kept for the next one while the configuration allows (see the module)."""

    def __init__(self):
        self._run: Run | None = None
        self._key: dict | None = None
        self._left: dict | None = None  # the optimizer state the last call handed back (its arrays the run's own)
        self._closer: weakref.finalize | None = None
        self.started = 0  # jobs set up so far (the first call, and each one that could not go on)

    @staticmethod
    def keeps(cfg: Config, comm: Comm, optimizer_state: dict | None) -> bool:
        """Whether a job of cfg on comm can be kept between calls: one process, in-memory rows, no files, and the
        optimizer state carried from call to call (without it each call starts a new optimizer: a new job)."""
        return (comm.size == 1 and cfg.data == ARRAYS and optimizer_state is not None
                and not any(getattr(cfg, name) for name in WHOLE_JOB))

    def run(self, cfg: Config, comm: Comm, dataset: Callable[[], Dataset], initial: np.ndarray, *,
            started: float, optimizer_state: dict, callback: Callback | None = None, callback_every: int = 0) -> Run:
        """Train as `distbp.train.job.run_job` does: on the kept run when this call goes on where the last one
        left off (the same configuration but the seed, and the optimizer state the last call handed back),
        else on a new one, which is kept. Returns the run; an error ends the kept job and propagates."""
        key = _key(cfg)
        if self._run is not None and (key != self._key or not self._goes_on(optimizer_state)):
            self.close()
        try:
            if self._run is None:
                self._run = start_job(cfg, comm, started=started, dataset=dataset, initial=initial)
                self._key = key
                self._closer = weakref.finalize(self, end_job, self._run)
                self.started += 1
            else:
                renew(self._run, cfg, dataset, initial)
            train_job(self._run, callback, callback_every, optimizer_state)
        except BaseException:
            self._abandon()
            raise
        # what was handed back, its arrays dict copied too: a caller who puts other arrays in it is seen
        self._left = {**optimizer_state, "arrays": dict(optimizer_state.get("arrays", {}))}
        return self._run

    def _goes_on(self, state: dict) -> bool:
        """Whether `state` is what the last call handed back: its step count, meta and the run's own arrays (which
        the caller may have changed in place: the run trains on them as they are)."""
        left = self._left
        if left is None or not state or any(state.get(k) != left[k] for k in ("optimizer", "n_params", "steps",
                                                                             "meta")):
            return False
        arrays = state.get("arrays")
        return (isinstance(arrays, dict) and arrays.keys() == left["arrays"].keys()
                and all(arrays[k] is v for k, v in left["arrays"].items()))

    def close(self) -> None:
        """End the kept job (its strategy's buffers and threads given back); the next call sets up anew."""
        if self._closer is not None:
            self._closer()  # end_job, once
        self._forget()

    def _abandon(self) -> None:
        if self._closer is not None:
            self._closer.detach()
        if self._run is not None:
            abandon_job(self._run)
        self._forget()

    def _forget(self) -> None:
        self._run = self._key = self._left = self._closer = None


def _key(cfg: Config) -> dict:
    """What must be the same for a call to go on with the kept run: the whole configuration but MAY_CHANGE,
    as the caller gave it (before set-up resolves the layers and threads; lists copied, as set-up may replace them)."""
    return {f.name: _copied(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in MAY_CHANGE}


def _copied(value):
    return list(value) if isinstance(value, list) else value
