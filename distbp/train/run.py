"""What a training run holds (`Run`); where it stands is `distbp.train.position`, where its time goes
`distbp.train.instruments`.

Both the training loop (`distbp.train`) and the checkpoint code (`distbp.train.runstate`) import this
module; neither imports the other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data.batch import BatchBuffers
from distbp.data.datasets import Dataset
from distbp.data.shard import LocalRows, SharedRows
from distbp.nn.model import MLP
from distbp.observe.trace import NULL_TRACER, NullTracer, Tracer
from distbp.sync.base import GradientSync
from distbp.train.instruments import Instruments, Timers
from distbp.train.position import Position
from distbp.train.schedule import Schedule
from distbp.train.stopping import EarlyStopping
from distbp.train.watchdog import Watchdog


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
    instruments: Instruments = field(init=False, repr=False)  # the watchdog, tracer and timers above, as one

    def __post_init__(self) -> None:
        self.instruments = Instruments(self.watchdog, self.trace, self.timers)

    @property
    def alone(self) -> bool:
        """One rank and no --trace: no step needs another rank (every sum over ranks is this rank's own value,
        and the ranks cannot be at different steps or hold different parameters) and no timeline records the
        step's phases, so the loop takes its shorter path (`distbp.train.loop.step_alone`)."""
        return self.comm.size == 1 and isinstance(self.trace, NullTracer)

    def attach_scaling(self) -> None:
        """Give the model what its training learnt of the data, which model files keep (the dataset's own
        arrays, not copies): the feature scaling, which it applies when it predicts on raw rows; the labels
        its outputs stand for (model.classes); the targets' scaling, which model.predict undoes."""
        if self.data.scaling != "none":
            self.model.feature_offset, self.model.feature_factor = self.data.train.offset, self.data.train.factor
        if self.data.classes is not None:
            self.model.classes = self.data.classes
        if self.data.target_offset is not None:
            self.model.target_offset, self.model.target_factor = self.data.target_offset, self.data.target_factor

    def gather_train(self, rows: np.ndarray,
                     into: BatchBuffers | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Training rows into the run's buffers, or a strategy's own (`into`), as views (what strategies call).

        Timed as data in the run's buffers only: buffers of a strategy's own are filled by its other
        threads, while the main thread's time is already being counted.
        """
        if into is not None:
            return into.gather(self.data.train, rows)
        if not self.trace.on:  # the timer alone, without a context manager: it is called every step
            t0 = time.perf_counter()
            gathered = self.batch.gather(self.data.train, rows)
            self.timers.data_s += time.perf_counter() - t0
            return gathered
        with self.instruments.data("gather", rows=rows.shape[0]):
            return self.batch.gather(self.data.train, rows)
