"""The data-parallel training loop.

Per global batch (Horovod-style markers show the distributed steps):
  1. every rank gathers the rows of the batch that its strategy assigns it (`GradientSync.my_rows`);
  2. backward on them gives Σₙ ∂lⁿ/∂θ over those rows (`local_gradient`, in micro-batches if asked);
  3. [dist] the sum over ranks, started while backward still runs, gives ∇L (`finish`); the ranks
     agree on one verdict: loss and ∇L finite, every rank at the same step;
  4. every rank applies the same update θ ← θ − η·s·∇L (s = 1, or 1/B with --lr-scale mean) (`apply`),
     or the non-finite policy stops or skips it.
How each step is done is the gradient-sync strategy's business (`distbp.sync`); this module has no
mode branches. Only the root prints, writes metrics, checkpoints and the saved model.

Evaluations on the held-out rows come at each epoch's end and, with --eval-every N, after every N-th
update within an epoch; each is judged by the early-stopping rule (`distbp.train.stopping`), which may keep the
model (--save-best) or end the run there. Records (the history `fit` returns, the --metrics lines), in
order: one per epoch, as always, and one per mid-epoch evaluation, told apart by its "eval_step" key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Callable

import numpy as np

from distbp.testing import faults
from distbp.data import localdata
from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data.datasets import Dataset, load_dataset
from distbp.errors import ConfigError, DistbpError, NonFiniteError
from distbp.nn.model import MLP
from distbp.nn.modelfile import initial_parameters
from distbp.observe.progress import Progress
from distbp.data.batch import BatchBuffers
from distbp.train.run import Run
from distbp.train.schedule import Schedule
from distbp.train.runstate import check_outputs, claim_checkpoint_dir, keep_claim, new_run_id, release_checkpoint_dir, resume, save, save_best
from distbp.train.stopping import EarlyStopping
from distbp.data.shard import SharedRows
from distbp.sync.factory import make_sync
from distbp.train.memory import check_fits_machine
from distbp.sync.base import GradientSync, Layout, ModelShape
from distbp.observe.trace import NULL_TRACER, PHASES, NullTracer, Tracer, align_clocks, parse_steps
from distbp.train.watchdog import HEARTBEAT_PREFIX, Watchdog, remove_abandoned_heartbeats


def setup(cfg: Config, comm: Comm, dataset: Callable[[], Dataset] | None = None,
          initial: np.ndarray | None = None) -> Run:
    """Load data, build the model and the gradient-sync strategy, agree across ranks, resume if asked.

    dataset: makes the rows to train on (the Python API's arrays) instead of loading cfg.data; initial: the
    flat parameters (n_params,) to start from instead of the seed's initialisation (the root's are used,
    like the seed's). A checkpoint (--resume) wins over both.
    The watchdog runs from the first collective on: a rank that stops while the others wait for it at
    start-up ends the job too (its heartbeats start once their folder is agreed).
    """
    watchdog = Watchdog(comm, cfg.timeout)
    try:
        return _setup(cfg, comm, watchdog, dataset, initial)
    except BaseException:
        watchdog.stop()  # a failed set-up leaves no thread behind (the Python API's caller goes on)
        raise


def _setup(cfg: Config, comm: Comm, watchdog: Watchdog, dataset: Callable[[], Dataset] | None,
           initial: np.ndarray | None) -> Run:
    faults.inject(comm.rank, "start")  # test hook: a rank that fails or stops while loading its data
    data, err = load_data(cfg, comm.size, dataset, comm.rank)
    with watchdog.section("start-up", 0):
        comm.agree_on_failure(err)  # [dist] one rank's bad file stops every rank, reported once
        check_outputs(cfg, comm)  # [dist] a path we cannot write is found now, not after training
        if cfg.local_rows:  # [dist] each rank's own rows: one dataset's scaling and classes, a plan for them
            data, plan, fingerprint = localdata.agree(data, comm, scale=cfg.scale, batch_size=cfg.batch_size, seed=cfg.seed)
            cfg.layers = resolve_layers(cfg, data)  # the same on every rank now, and so is any error
            # the strategy and buffers are sized for the largest piece any rank computes in a step
            model, sync = build_agreed(dataclasses.replace(cfg, batch_size=plan.max_rows * comm.size), comm,
                                       layout_of(comm), initial)
        else:
            model, sync = build_agreed(cfg, comm, layout_of(comm), initial)
            plan = SharedRows(data.train.n_rows, cfg.batch_size, cfg.seed, sync.my_rows, comm.rank, comm.size)
            fingerprint = data.fingerprint()
        # [dist] every rank must run the same job on the same data, or the allreduce silently mixes two jobs
        shared = {k: v for k, v in cfg.to_dict().items() if k not in ("threads", "progress")}
        shared.update(n_params=model.n_params, train_rows=plan.train_rows, features=data.n_features,
                      data_fingerprint=fingerprint)
        comm.check_agree("configuration", shared)
        comm.bcast(model.flat_params)  # [dist] identical starting point even if initialisation ever differs
        sync.build(comm, model)
        # [dist] one job per checkpoint directory, and a new run never takes another run's
        lock = claim_checkpoint_dir(cfg, comm) if cfg.checkpoint_dir else None
        watchdog.attach_heartbeats(heartbeat_dir(cfg, comm))
        run_id = new_run_id(comm)
        tracer = start_trace(cfg, comm)  # [dist] clocks aligned to the root's
    batch = BatchBuffers(sync.rows_at_once, data.n_features, model.sizes[-1], model.dtype, model.loss.labels)
    run = Run(cfg, comm, data, model, sync, batch, watchdog, plan, Schedule.of(cfg, plan.n_batches),
              EarlyStopping.of(cfg), run_id=run_id, lock=lock, trace=tracer)
    model.trace = watchdog.trace = tracer
    sync.attach_trace(tracer)
    if faults.PLAN:
        run.sync = faults.FaultySync(sync, run)  # test hook: the planned fault fires inside the step
    if cfg.resume:
        try:
            with watchdog.section("resume", 0):
                resume(run)
        except BaseException:
            release_checkpoint_dir(run)  # a refused resume leaves the directory to the next job
            raise
    return run


def start_trace(cfg: Config, comm: Comm) -> Tracer | NullTracer:
    """[dist] --trace: this rank's tracer, its clock offset to the root measured now; else the null one."""
    if not cfg.trace:
        return NULL_TRACER
    tracer = Tracer(cfg.trace, comm.rank, parse_steps(cfg.trace_steps))
    t0 = tracer.now()
    rtts = align_clocks(tracer, comm)
    t0 += tracer.offset_us  # the span started on this rank's own clock
    tracer.complete("clock alignment", t0, tracer.now() - t0, PHASES,
                    **({"best_rtt_us": [round(r, 1) for r in rtts]} if rtts else {}))
    return tracer


def load_data(cfg: Config, ranks: int, dataset: Callable[[], Dataset] | None = None,
              rank: int = 0) -> tuple[Dataset | None, Exception | None]:
    """(the dataset, None) with cfg.layers resolved against it, or (None, the error) for the ranks to agree on.

    dataset: makes the rows instead of cfg.data (in-memory arrays, checked like loaded ones). With
    cfg.local_rows, {rank} in cfg.data is this rank's number."""
    try:
        spec = cfg.data.replace("{rank}", str(rank)) if cfg.local_rows else cfg.data
        data = (dataset() if dataset is not None
                else load_dataset(spec, seed=cfg.seed, test_fraction=cfg.test_fraction, scale=cfg.scale))
        if not cfg.local_rows:  # local rows: resolved once the ranks agree on one dataset (localdata)
            cfg.layers = resolve_layers(cfg, data)
            check_data_fits(cfg, data, ranks)
        check_held_out(cfg, data)
    except (ValueError, OSError, DistbpError) as e:
        return None, e
    except MemoryError:
        return None, ConfigError(f"not enough memory to load {cfg.data}")
    return data, None


def build_agreed(cfg: Config, comm: Comm, layout: Layout,
                 initial: np.ndarray | None = None) -> tuple[MLP, GradientSync]:
    """The model (from `initial` flat parameters if given) and the (not yet built) strategy; what cannot be
    built, or would not fit in this machine's memory, stops every rank before anything large is allocated.

    cfg.init_from (--init-from): every rank reads that model file, which must be the same network (layer
    sizes, activations, loss), and its parameters win over `initial` (distbp.fit passes its model's own)."""
    err, model, sync = None, None, None
    try:
        sync = make_sync(cfg, layout, ModelShape(tuple(cfg.layers), np.dtype(cfg.dtype), cfg.loss == "cross_entropy"))
        check_fits_machine(sync)
        activation = cfg.activation.split(",") if "," in cfg.activation else cfg.activation
        model = MLP(cfg.layers, activation=activation, loss=cfg.loss, dtype=cfg.dtype, seed=cfg.seed)
        if cfg.init_from:
            initial = initial_parameters(cfg.init_from, model)  # [dist] a bad file stops every rank below
        if initial is not None:
            if np.shape(initial) != (model.n_params,):
                raise ConfigError(f"the initial parameters have shape {np.shape(initial)}, the model "
                                  f"{'-'.join(map(str, model.sizes))} needs ({model.n_params},)")
            model.flat_params[...] = initial
    except (ValueError, DistbpError) as e:
        err = e
    comm.agree_on_failure(err)  # [dist]
    return model, sync


def layout_of(comm: Comm) -> Layout:
    """Collective: this rank's place in the job."""
    return Layout(comm.rank, comm.size, tuple(comm.node_sizes()))


def heartbeat_dir(cfg: Config, comm: Comm) -> str | None:
    """Where the watchdogs leave heartbeats: beside the checkpoints (shared by every node), else a
    directory in this machine's temp folder, named by the root (enough when all ranks share a node)."""
    if cfg.timeout <= 0 or comm.size == 1:
        return None
    if cfg.checkpoint_dir:
        return os.path.join(cfg.checkpoint_dir, ".heartbeat")
    import tempfile
    import uuid
    if comm.is_root:
        remove_abandoned_heartbeats(tempfile.gettempdir())  # of earlier jobs on this host that ended abnormally
    name = comm.allgather_object(f"{HEARTBEAT_PREFIX}{uuid.uuid4().hex[:12]}" if comm.is_root else None)[0]
    return os.path.join(tempfile.gettempdir(), name)


def resolve_layers(cfg: Config, data: Dataset) -> list[int]:
    outputs = data.n_targets
    layers = list(cfg.layers) if cfg.layers else [data.n_features, 256, outputs]
    if layers[0] != data.n_features:
        raise ConfigError(f"--layers starts with {layers[0]} inputs but {cfg.data} has {data.n_features} features")
    if cfg.loss == "cross_entropy":
        if data.n_classes is None:
            raise ConfigError(f"{cfg.data} has float targets: use --loss mse")
        if layers[-1] < data.n_classes:
            raise ConfigError(f"--layers ends with {layers[-1]} outputs but {cfg.data} has labels up to "
                              f"{data.n_classes - 1} ({data.n_classes} classes)")
    elif data.n_classes is None and layers[-1] != data.n_targets:
        raise ConfigError(f"--layers ends with {layers[-1]} outputs but {cfg.data} has {data.n_targets} targets")
    elif data.n_classes is not None and layers[-1] != data.n_classes:
        raise ConfigError(f"--loss mse on class labels needs {data.n_classes} outputs (one-hot), got {layers[-1]}")
    return layers


def check_held_out(cfg: Config, data: Dataset) -> None:
    """--eval-every, --early-stop-patience and --save-best evaluate on held-out rows: there must be some (the
    Python API trains without any unless given validation=)."""
    asked = [f for f, v in (("--eval-every", cfg.eval_every), ("--early-stop-patience", cfg.early_stop_patience),
                            ("--save-best", cfg.save_best)) if v]
    if asked and data.test is None:
        raise ConfigError(f"{', '.join(asked)}: evaluations need held-out rows, and {cfg.data} has none "
                          "(distbp.fit: give validation=)")


def check_data_fits(cfg: Config, data: Dataset, ranks: int) -> None:
    n = data.train.n_rows
    if n < ranks:
        raise ConfigError(f"{cfg.data} has {n} training rows, fewer than the {ranks} ranks: every rank needs data")


# ---- one step ---------------------------------------------------------------------------------

def train_step(run: Run, rows: np.ndarray, batch_rows: int) -> tuple[float, float]:
    """One global batch, steps 2–4 of the module docstring on this rank's rows (step 1).

    Returns (Σ loss, correct) over all ranks.
    """
    sync, t, tr = run.sync, run.timers, run.trace
    data_before = t.data_s
    with run.watchdog.section("gradient allreduce", run.pos.step):
        t1 = time.perf_counter()
        with tr.span("local gradient", rows=int(rows.shape[0])):
            loss, correct = sync.local_gradient(run.gather_train, rows, batch_rows)  # 2, and [dist] 3 starts
        t2 = time.perf_counter()
        with tr.span("finish"):
            sync.finish()  # [dist] ∇L (or this rank's part of it), identical on every rank
        with tr.span("scalar allreduce"):
            totals = agreed_totals(run, loss, correct, sync.all_finite())
    t3 = time.perf_counter()
    if np.isfinite(totals[0]) and totals[2] == 0:
        if not run.schedule.constant:
            sync.set_lr(run.schedule(run.pos.step))  # a pure function of the step: resume gets it back
        with run.watchdog.section("parameter update", run.pos.step), tr.span("update"):
            sync.apply(run.model.flat_params, lr_scale(run.cfg, batch_rows))  # 4
    else:
        handle_nonfinite(run, totals[0], sync.nonfinite_layers())
    t4 = time.perf_counter()
    t.comm_s += t3 - t2
    t.compute_s += (t2 - t1) - (t.data_s - data_before) + (t4 - t3)
    return float(totals[0]), float(totals[1])


def agreed_totals(run: Run, loss: float, correct: float, finite: bool) -> np.ndarray:
    """[dist] Σ over ranks of (loss, correct, ranks with NaN/Inf in ∇L, step, step²); raises if the ranks
    are not all at the same step (p·Σs² − (Σs)² is 0 exactly then, and every rank sees the same value)."""
    step = float(run.pos.step)
    totals = run.comm.sum_scalars([loss, correct, 0.0 if finite else 1.0, step, step * step])
    p = run.comm.size
    if p * totals[4] - totals[3] ** 2 != 0:
        raise DistbpError(f"ranks are out of step: this batch is step {run.pos.step} on rank {run.comm.rank}, "
                          f"but the ranks' mean step is {totals[3] / p:g}; they would mix gradients "
                          "of different batches")
    return totals


def lr_scale(cfg: Config, batch_rows: int) -> float:
    """s in θ ← θ − η·s·∇L: 1 for the summed loss (the seed's), 1/B for the mean over the global batch."""
    return 1.0 if cfg.lr_scale == "sum" else 1.0 / batch_rows


def handle_nonfinite(run: Run, loss: float, where: list[str]) -> None:
    """Stop (or skip with --skip-nonfinite) on NaN/Inf; every rank sees the same verdict, so all decide alike.

    where: the layers with NaN/Inf in ∇L (the strategy's `nonfinite_layers`).
    """
    what = ("loss " + str(loss) + ("; " if where else "")) if not np.isfinite(loss) else ""
    msg = (f"non-finite values at epoch {run.pos.epoch} step {run.pos.step}: {what}"
           f"{'NaN/Inf in ∇L of ' + ', '.join(where) if where else ''}")
    if run.cfg.skip_nonfinite:
        run.pos.skipped += 1
        if run.comm.is_root:
            print(f"distbp: warning: {msg}; update skipped (--skip-nonfinite)", file=sys.stderr, flush=True)
        return
    raise NonFiniteError(msg + " (lower --lr, check the data, or pass --skip-nonfinite)")


# ---- epochs -----------------------------------------------------------------------------------

def fit(run: Run, callback: Callback | None = None, callback_every: int = 0) -> list[dict]:
    """Train for cfg.epochs from the current position, or until early stopping; returns the history (the
    --metrics records: one per epoch, and one per mid-epoch evaluation with --eval-every).

    callback(record) is called on every rank with each epoch's metrics (the --metrics line) and, if
    callback_every > 0, every that many steps with a step record (epoch, step, the epoch's running
    train_loss and train_accuracy); a true return on any rank stops training on every rank after that
    epoch or step (with a checkpoint there, when checkpointing). Early stopping ends it the same way.
    """
    cfg, pos = run.cfg, run.pos
    metrics_file = open_metrics(run)
    early = run.stopping.exhausted(pos)  # a resumed run that had stopped early stays stopped
    if run.comm.is_root:
        if early:
            print(run.stopping.stopped_line(pos), flush=True)
        elif pos.epoch >= cfg.epochs:
            print(f"distbp: the run already finished its {pos.epoch} epochs; nothing to train "
                  "(raise --epochs to train more)", flush=True)
    while pos.epoch < cfg.epochs and not early:
        t_epoch = time.perf_counter()
        run.timers.reset()
        run.sync.reset_stats()
        if not run_epoch(run, callback, callback_every, metrics_file):
            save_stopped(run)  # stopped mid-epoch (callback, early stopping): a resume continues from this step
            break
        record = epoch_metrics(run, time.perf_counter() - t_epoch)
        early = judge(run, record)
        log(run, metrics_file, record, summary_line(record))
        if early and run.comm.is_root:
            print(run.stopping.stop_line(pos), flush=True)
        stop = asks_to_stop(run, callback, record) or early
        pos.epoch += 1
        pos.batch = 0
        pos.loss_sum = pos.correct = pos.seen = 0.0
        if cfg.checkpoint_dir and (pos.epoch % cfg.checkpoint_every == 0 or pos.epoch == cfg.epochs or stop):
            with run.trace.span("checkpoint", step=pos.step):
                save(run)
        if stop:
            break
    if metrics_file:
        metrics_file.close()
    if cfg.save_best and pos.best_step is not None and run.comm.is_root:
        print(f"distbp: the best model ({cfg.early_stop_metric} {pos.best:.6g} at step {pos.best_step}) is in "
              f"{cfg.save_best}", flush=True)
    if pos.skipped and run.comm.is_root:
        print(f"distbp: warning: {pos.skipped} of {pos.step} updates were skipped for NaN/Inf (--skip-nonfinite)",
              file=sys.stderr, flush=True)
    release_checkpoint_dir(run)
    return run.history


Callback = Callable[[dict], object]


def asks_to_stop(run: Run, callback: Callback | None, record: dict) -> bool:
    """[dist] callback(record) on every rank; True on every rank if it returned a true value on any."""
    if callback is None:
        return False
    return run.comm.max_scalar(1.0 if callback(record) else 0.0) > 0


def judge(run: Run, record: dict) -> bool:
    """[dist] The early-stopping rule on the evaluation in `record` (which it completes, see
    `EarlyStopping.observe`); --save-best keeps the model when it improved. True: the run stops here."""
    improved, stop = run.stopping.observe(run.pos, record)
    if improved and run.cfg.save_best:
        save_best(run)  # [dist] collective: a failed write stops every rank
    return stop


def log(run: Run, metrics_file, record: dict, line: str) -> None:
    """The record into the history (every rank); the root prints its line and writes it to --metrics."""
    run.history.append(record)
    if run.comm.is_root:
        print(line, flush=True)
        if metrics_file:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()


def save_stopped(run: Run) -> None:
    """A checkpoint where a callback or early stopping stopped the run mid-epoch (with checkpointing on)."""
    if run.cfg.checkpoint_dir:
        with run.trace.span("checkpoint", step=run.pos.step):
            save(run)


def run_epoch(run: Run, callback: Callback | None = None, callback_every: int = 0, metrics_file=None) -> bool:
    """The global batches of epoch pos.epoch from pos.batch on, with the checks, evaluations (--eval-every) and
    checkpoints between steps.

    Returns False if the callback or early stopping stopped it before its end (see `fit`)."""
    cfg, comm, pos = run.cfg, run.comm, run.pos
    batches = run.plan.epoch(pos.epoch)  # (this rank's rows, the global batch's rows) per step
    bar = Progress(len(batches), f"epoch {pos.epoch + 1}/{cfg.epochs}", cfg.progress, comm.is_root)
    while pos.batch < len(batches):
        rows, batch_rows = batches[pos.batch]
        run.trace.at_step(pos.step)  # --trace: write the last step's events; the --trace-steps window
        with run.trace.span("step", step=pos.step, epoch=pos.epoch):
            loss, correct = train_step(run, rows, batch_rows)
        pos.loss_sum += loss
        pos.correct += correct
        pos.seen += batch_rows
        pos.batch += 1
        pos.step += 1
        bar.update(pos.batch, pos.loss_sum / pos.seen)
        if cfg.check_every and pos.step % cfg.check_every == 0:
            with run.watchdog.section("parameter check", pos.step):
                comm.check_identical(run.model.flat_params, pos.step)  # [dist] ranks still agree?
        # before the checkpoint of this step, which then carries the evaluation's record and verdict; the
        # epoch's last step is evaluated by `fit` anyway
        if cfg.eval_every and pos.step % cfg.eval_every == 0 and pos.batch < len(batches):
            bar.close()  # the evaluation's line goes where the bar was; the bar is drawn again below it
            if evaluate_now(run, metrics_file):
                return False
        if cfg.checkpoint_dir and cfg.checkpoint_steps and pos.step % cfg.checkpoint_steps == 0:
            with run.trace.span("checkpoint", step=pos.step):
                save(run)
        keep_claim(run)
        if callback_every and pos.step % callback_every == 0 and pos.batch < len(batches):
            record = {"epoch": pos.epoch + 1, "step": pos.step, "train_loss": pos.loss_sum / pos.seen,
                      "train_accuracy": pos.correct / pos.seen if run.data.n_classes else None}
            if asks_to_stop(run, callback, record):
                bar.close()
                return False
    bar.close()
    return True


def evaluate_now(run: Run, metrics_file=None) -> bool:
    """[dist] --eval-every: evaluate after pos.step updates, judge it, record and print it.

    The record: {"epoch", "eval_step" (updates done), "train_loss" and "train_accuracy" (the epoch's running
    values so far), "test_loss", "test_accuracy"}, plus best_<metric> and stopped_early as in an epoch's
    record. Returns True if early stopping ends the run here."""
    pos = run.pos
    test_loss, test_accuracy = evaluate(run)
    record = {"epoch": pos.epoch + 1, "eval_step": pos.step, "train_loss": pos.loss_sum / max(pos.seen, 1),
              "train_accuracy": pos.correct / max(pos.seen, 1) if run.data.n_classes else None,
              "test_loss": test_loss, "test_accuracy": test_accuracy}
    early = judge(run, record)
    log(run, metrics_file, record, eval_line(record))
    if early and run.comm.is_root:
        print(run.stopping.stop_line(pos), flush=True)
    return early


def epoch_metrics(run: Run, elapsed: float) -> dict:
    pos, t = run.pos, run.timers
    test = evaluate(run) if run.data.test is not None else None
    # [dist] time split: the slowest rank's view decides the step time, so report the max over ranks
    times = run.comm.max_scalar(t.comm_s), run.comm.max_scalar(t.compute_s), run.comm.max_scalar(t.data_s)
    stats = run.sync.stats
    return {
        "epoch": pos.epoch + 1,
        "train_loss": pos.loss_sum / max(pos.seen, 1),
        "train_accuracy": pos.correct / max(pos.seen, 1) if run.data.n_classes else None,
        "test_loss": test[0] if test else None,
        "test_accuracy": test[1] if test else None,
        "samples_per_s": pos.seen / elapsed if elapsed > 0 else None,
        "time_s": elapsed,
        "compute_s": times[1],
        "comm_s": times[0],
        "data_s": times[2],
        "overlapped_comm_s": stats.get("overlap_s"),
        "grad_norm": stats.get("grad_norm"),  # --clip-grad-norm: the epoch's mean ‖scale·∇L‖ before clipping
        "clipped_steps": stats.get("clipped_steps"),
        "steps": pos.step,
        "lr": run.schedule(max(pos.step - 1, 0)),  # η of the epoch's last update
        "skipped_nonfinite": pos.skipped,
        "ranks": run.comm.size,
        # this launch's start-up (data, model, compiling kernels) in its first epoch's record, not in its time
        "startup_s": run.startup_s if not run.history else 0.0,
    }


def evaluate(run: Run) -> tuple[float, float | None]:
    """[dist] Mean loss and accuracy on the test split: each rank scores a contiguous share, sums are allreduced."""
    split, model, comm = run.data.test, run.model, run.comm
    r0, r1, n = run.plan.eval_share(split.n_rows)
    chunk = run.sync.rows_at_once  # the rows the buffers and the model's workspace hold
    loss_sum = correct = 0.0
    with run.watchdog.section("evaluation", run.pos.step):
        for s in range(r0, r1, chunk):
            X, y = run.batch.gather(split, np.arange(s, min(s + chunk, r1), dtype=np.int64))
            loss_sum += model.loss_into(X, y)
            correct += model.count_correct(y)
        totals = comm.sum_scalars([loss_sum, correct])
    return totals[0] / n, (totals[1] / n if run.data.n_classes else None)


def summary_line(r: dict) -> str:
    acc = lambda v: "  -   " if v is None else f"{100 * v:5.1f}%"
    return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  train {acc(r['train_accuracy'])}  "
            f"test {acc(r['test_accuracy'])}  {r['samples_per_s']:9.0f} samples/s  "
            f"compute {r['compute_s']:.2f}s comm {r['comm_s']:.2f}s")


def eval_line(r: dict) -> str:
    """The root's line for a mid-epoch evaluation (--eval-every), beside the epochs' summary lines."""
    acc = "" if r["test_accuracy"] is None else f"  test {100 * r['test_accuracy']:5.1f}%"
    return f"epoch {r['epoch']:3d}  step {r['eval_step']:6d}  test loss {r['test_loss']:.4f}{acc}"


def open_metrics(run: Run):
    """Root: the metrics file, rewound to what the run had done (a resumed run rewrites the epochs of its
    checkpoint, so that epochs after the checkpoint are not listed twice)."""
    if not (run.cfg.metrics and run.comm.is_root):
        return None
    os.makedirs(os.path.dirname(os.path.abspath(run.cfg.metrics)), exist_ok=True)
    fh = open(run.cfg.metrics, "w")
    for record in run.history:
        fh.write(json.dumps(record) + "\n")
    fh.flush()
    return fh
