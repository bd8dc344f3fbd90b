"""What a training run holds: its parts (`Run`), where it stands (`Position`), where its time went (`Timers`).

Both the training loop (`distbp.train`) and the checkpoint code (`distbp.train.runstate`) import this
module; neither imports the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data.datasets import Dataset, Split
from distbp.nn.model import MLP
from distbp.train.schedule import Schedule
from distbp.data.shard import LocalRows, SharedRows
from distbp.train.stopping import EarlyStopping
from distbp.sync.base import GradientSync
from distbp.observe.trace import NULL_TRACER, NullTracer, Tracer
from distbp.train.watchdog import Watchdog


@dataclass
class Position:
    """Where training stands: the next batch to run is `batch` of `epoch`; `step` updates done so far."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    skipped: int = 0  # updates skipped for NaN/Inf (--skip-nonfinite)
    # running sums of the current epoch (so a mid-epoch resume reports the same epoch metrics)
    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    # early stopping and --save-best (distbp.train.stopping): the best held-out metric so far, the step after which
    # it was measured, and the evaluations since then (defaults: what checkpoints from before them mean)
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0


@dataclass
class Timers:
    """Seconds of this epoch on this rank: gathering rows, computing, waiting for other ranks."""

    data_s: float = 0.0
    compute_s: float = 0.0
    comm_s: float = 0.0

    def reset(self) -> None:
        self.data_s = self.compute_s = self.comm_s = 0.0


@dataclass
class Run:
    """Everything a training run holds; built by `distbp.train.setup`."""

    cfg: Config
    comm: Comm
    data: Dataset
    model: MLP
    sync: GradientSync  # the mode: rows, local gradient, sum over ranks, update, checkpoint state
    batch: BatchBuffers
    watchdog: Watchdog
    plan: SharedRows | LocalRows  # which rows this rank computes at each step, and its share of evaluation
    schedule: Schedule | None = None  # η at each global step (distbp.train.schedule)
    stopping: EarlyStopping = field(default_factory=EarlyStopping)  # early stopping, --save-best (distbp.train.stopping)
    pos: Position = field(default_factory=Position)
    timers: Timers = field(default_factory=Timers)
    history: list = field(default_factory=list)
    run_id: str | None = None  # names this run's checkpoints (kept across --resume)
    lock: str | None = None  # the root's lock on cfg.checkpoint_dir (its path), else None
    lock_refreshed: float = field(default_factory=time.monotonic)
    trace: Tracer | NullTracer = NULL_TRACER  # --trace: this rank's timeline
    startup_s: float = 0.0  # seconds from the launch to the first step (set by the CLI)

    def attach_scaling(self) -> None:
        """Give the model its training's feature scaling, which it applies when it predicts on raw rows and
        which model files keep (the dataset's own arrays, not copies)."""
        if self.data.scaling != "none":
            self.model.feature_offset, self.model.feature_factor = self.data.train.offset, self.data.train.factor

    def gather_train(self, rows: np.ndarray, into: BatchBuffers | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Training rows into the run's buffers, or a strategy's own (`into`), as views (what strategies call).

        Timed as data in the run's buffers only: buffers of a strategy's own are filled by its other
        threads, while the main thread's time is already being counted.
        """
        if into is not None:
            return into.gather(self.data.train, rows)
        t0 = time.perf_counter()
        with self.trace.span("gather", rows=int(rows.shape[0])):
            out = self.batch.gather(self.data.train, rows)
        self.timers.data_s += time.perf_counter() - t0
        return out
