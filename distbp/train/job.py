"""One training job from a resolved configuration: what `distbp train` and `distbp.fit` share.

    set up (data, model, strategy, agreement, resume) → compile the kernels once → train → save
    → shut down together (the watchdog bounds the last barrier) → write the trace

Whatever way the job ends, each rank's trace file is closed and the checkpoint directory released; an
error propagates to the caller, which reports it (the command line prints it once and exits 2; the
Python API raises it on every rank).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data.datasets import Dataset
from distbp.testing import faults
from distbp.train import runstate
from distbp.train.loop import Callback, fit
from distbp.train.run import Run
from distbp.train.setup import setup
from distbp.train.warmup import shared_warmup, startup_line


def run_job(cfg: Config, comm: Comm, *, started: float, thread_note: str | None = None,
            dataset: Callable[[], Dataset] | None = None, initial: np.ndarray | None = None,
            callback: Callback | None = None, callback_every: int = 0, optimizer_state: dict | None = None) -> Run:
    """Train as `cfg` says; returns the finished run (its model, history and position).

    started: time.monotonic() at the launch (start-up is reported from it); dataset, initial: see
    `distbp.train.setup.setup`; callback, callback_every: see `distbp.train.loop.fit`. optimizer_state: a dict
    to continue the optimizer from (when it holds a state; a checkpoint resumed wins) and to hand the final
    state back in (`runstate.optimizer_state`).
    """
    run = None
    try:
        run = start_job(cfg, comm, started=started, thread_note=thread_note, dataset=dataset, initial=initial)
        train_job(run, callback, callback_every, optimizer_state)
        end_job(run)
        return run
    except BaseException:
        if run is not None:
            abandon_job(run)
        raise


def start_job(cfg: Config, comm: Comm, *, started: float, thread_note: str | None = None,
              dataset: Callable[[], Dataset] | None = None, initial: np.ndarray | None = None) -> Run:
    """Set up and compile: the run, ready for its first step; the root prints the start-up lines."""
    run = setup(cfg, comm, dataset=dataset, initial=initial)
    try:
        compiled = shared_warmup(run)  # [dist] the root compiles the kernels, the others load them
    except BaseException:
        abandon_job(run)
        raise
    run.startup_s = time.monotonic() - started
    if comm.is_root:
        print(header(run, thread_note), flush=True)
        print(startup_line(run.startup_s, compiled), flush=True)
        if cfg.init_from and run.pos.step == 0:  # not resumed from a checkpoint, which would win
            print(f"distbp: starting from the parameters in {cfg.init_from} (--init-from)", flush=True)
    return run


def train_job(run: Run, callback: Callback | None = None, callback_every: int = 0,
              optimizer_state: dict | None = None) -> None:
    """Train the set-up run as its cfg says: the epochs, then what training learnt of the data into the model,
    and the saved model file (--save). optimizer_state: see `run_job`."""
    if optimizer_state and not run.cfg.resume:
        runstate.load_optimizer_state(run, optimizer_state)
    fit(run, callback, callback_every)
    if optimizer_state is not None:
        optimizer_state.update(runstate.optimizer_state(run))  # [dist] gathered when sharded
    run.attach_scaling()  # the model predicts on raw rows, and model files keep the scaling
    if run.cfg.save:
        runstate.save_params(run, run.cfg.save)


def end_job(run: Run) -> None:
    """[dist] The job's normal end: every rank together (the watchdog bounds the last barrier), the strategy's
    shared windows freed, the trace written; the root says where the files went."""
    cfg, comm = run.cfg, run.comm
    faults.inject(comm.rank, "end")  # test hook: a rank that fails or stops before the job's end
    with run.watchdog.section("shut-down", run.pos.step):
        comm.barrier()  # [dist] the watchdog bounds this wait too
        run.sync.close()  # [dist] shared windows are freed together
    run.watchdog.stop()
    run.trace.finish(comm)  # [dist] the root writes --trace with every rank's events
    if comm.is_root and cfg.save:
        print(f"distbp: saved parameters to {cfg.save}", flush=True)
    if comm.is_root and cfg.trace:
        print(f"distbp: wrote the trace to {cfg.trace} (open it in https://ui.perfetto.dev or chrome://tracing)",
              flush=True)


def abandon_job(run: Run) -> None:
    """A job that ends by an error: each rank's --trace file closed up to the failure, the checkpoint directory
    released, the watchdog stopped (the caller decides how the job ends: a library caller goes on)."""
    run.trace.close_part()
    runstate.release_checkpoint_dir(run)  # the job is over: the next one may have the directory
    run.watchdog.stop()
    if run.comm.size == 1:  # a library caller goes on: the strategy's communicators, window and threads too
        run.sync.close()  # (under MPI close is collective, and the failed job ends anyway)


def header(run: Run, thread_note: str | None = None) -> str:
    """The root's two start-up lines: ranks, threads and data; model, optimizer and the strategy."""
    cfg, comm, data, model = run.cfg, run.comm, run.data, run.model
    test_rows = None if data.test is None else run.plan.eval_share(data.test.n_rows)[2]
    test = f", {test_rows} test" if test_rows is not None else ""
    capped = f" ({thread_note})" if thread_note else ""
    where = " (each rank its own)" if cfg.local_rows else " (from the data cache)" if data.from_cache else ""
    return (f"distbp: {comm.size} rank(s) x {cfg.threads} thread(s){capped}; data {data.name}: {run.plan.train_rows} "
            f"train{test} rows{where}, {data.scaling}\n"
            f"distbp: model {model.architecture()}, {cfg.dtype}, "
            f"{model.n_params} parameters; {cfg.optimizer} lr {cfg.lr} ({cfg.lr_scale}), global batch "
            f"{cfg.batch_size}, {cfg.epochs} epochs; {run.sync.describe()}")
