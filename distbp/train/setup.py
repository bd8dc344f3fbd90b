"""Assembling a training run, in one direction: data → agreement → model and strategy → `Run`.

  1. every rank loads its data (`load_data`), resolving the layers against it;
  2. [dist] the ranks agree: one rank's bad file stops all, and every rank must run the same job on the
     same data (`agree_on_job`);
  3. the model and the gradient-sync strategy, built (`build_agreed`) for the rows each rank computes
     (`plan_rows`), from one starting point;
  4. the `Run`, with its watchdog, trace, checkpoint lock and run id, resumed from a checkpoint if asked.

Every [dist] line is a collective: each happens on every rank in this order.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.config import Config
from distbp.data import localdata
from distbp.data.batch import BatchBuffers
from distbp.data.datasets import ARRAYS, BUILTINS, Dataset, load_dataset
from distbp.data.shard import LocalRows, SharedRows
from distbp.data.targets import show
from distbp.errors import ConfigError, DistbpError
from distbp.host import threads
from distbp.host.files import UnsafeFolder, make_private_dir
from distbp.nn.model import MLP, layer_slices_of
from distbp.nn.modelfile import initial_parameters
from distbp.observe.trace import NULL_TRACER, PHASES, NullTracer, Tracer, align_clocks, parse_steps
from distbp.sync.base import GradientSync, Layout, ModelShape
from distbp.sync.factory import make_sync
from distbp.testing import faults
from distbp.train.memory import check_fits_machine
from distbp.train.position import Position
from distbp.train.run import Run
from distbp.train.scores import METRICS
from distbp.train.runstate import check_outputs, claim_checkpoint_dir, new_run_id, release_checkpoint_dir, resume
from distbp.train.schedule import Schedule
from distbp.train.stopping import EarlyStopping
from distbp.train.watchdog import HEARTBEAT_PREFIX, Watchdog, remove_abandoned_heartbeats


def setup(cfg: Config, comm: Comm, dataset: Callable[[], Dataset] | None = None,
          initial: np.ndarray | None = None) -> Run:
    """Load data, build the model and the gradient-sync strategy, agree across ranks, resume if asked.

    dataset: makes the rows to train on (the Python API's arrays) instead of loading cfg.data; initial: the
    flat parameters (n_params,) to start from instead of the seed's initialisation (the root's are used,
    like the seed's). A checkpoint (--resume) wins over both.
    The watchdog runs from the first collective on: a rank that stops while the others wait for it at
    start-up ends the job too (its heartbeats start once their folder is agreed). In one process there is no
    peer to wait for, and a watchdog would end the caller's interpreter: none runs there.
    """
    watchdog = Watchdog(comm, cfg.timeout if comm.size > 1 else 0.0)
    made: list[Callable[[], None]] = []  # how to give back what the set-up made so far, in order
    try:
        return _setup(cfg, comm, watchdog, dataset, initial, made)
    except BaseException:
        watchdog.stop()  # a failed set-up leaves no thread behind (the Python API's caller goes on)
        if comm.size == 1:  # a library caller goes on: nothing of the refused run may stay behind
            give_back(made)
        raise


def renew(run: Run, cfg: Config, dataset: Callable[[], Dataset], initial: np.ndarray) -> None:
    """The set-up run of one process, for a next job on new rows: what `setup` gives, without building again
    what stays (the model's buffers, the strategy with its optimizer state, the batch buffers, the instruments).

    cfg: the next job's configuration, which may differ from the run's in its seed only (the caller checks:
    `distbp.train.kept`); dataset makes its rows, initial (n_params,) its starting parameters. The run's
    position, history, plan, schedule and early-stopping rule start anew, as a new job's do.
    """
    data, err = load_data(cfg, 1, dataset)
    run.comm.agree_on_failure(err)  # the error a new job's set-up raises
    cfg.threads = run.cfg.threads  # settled when the run was set up; the pools are sized for it
    run.model.flat_params[...] = initial
    set_dropout(run.model, cfg)  # the masks are drawn from the seed
    run.cfg, run.data = cfg, data
    run.plan = SharedRows(data.train.n_rows, cfg.batch_size, cfg.seed, run.sync.my_rows, shuffle=cfg.shuffle)
    run.schedule, run.stopping = Schedule.of(cfg, run.plan.n_batches), EarlyStopping.of(cfg)
    run.pos, run.history = Position(), []


def give_back(made: list[Callable[[], None]]) -> None:
    """Undo what a refused set-up made (the strategy's communicators and shared window, the trace's part
    file), last first. In one process only: under MPI, `close` is collective and the failed job ends anyway."""
    for undo in reversed(made):
        undo()


def _setup(cfg: Config, comm: Comm, watchdog: Watchdog, dataset: Callable[[], Dataset] | None,
           initial: np.ndarray | None, made: list[Callable[[], None]]) -> Run:
    faults.inject(comm.rank, "start")  # test hook: a rank that fails or stops while loading its data
    data, err = load_data(cfg, comm.size, dataset, comm.rank)
    with watchdog.section("start-up", 0):
        comm.agree_on_failure(err)  # [dist] one rank's bad file stops every rank, reported once
        check_outputs(cfg, comm)  # [dist] a path we cannot write is found now, not after training
        data, plan, fingerprint, model, sync = plan_rows(cfg, comm, data, initial)
        agree_on_job(cfg, comm, model, plan, data, fingerprint)
        comm.bcast(model.flat_params)  # [dist] identical starting point even if initialisation ever differs
        sync.build(comm, model)
        made.append(sync.close)
        # [dist] one job per checkpoint directory, and a new run never takes another run's
        lock = claim_checkpoint_dir(cfg, comm) if cfg.checkpoint_dir else None
        watchdog.attach_heartbeats(heartbeat_dir(cfg, comm))
        run_id = new_run_id(comm)
        tracer = start_trace(cfg, comm)  # [dist] clocks aligned to the root's
        made.append(tracer.discard)
    weighted = any(s is not None and s.w is not None for s in (data.train, data.test))
    batch = BatchBuffers(sync.rows_at_once, data.n_features, model.sizes[-1], model.dtype, model.loss.labels,
                         weighted)
    run = Run(cfg, comm, data, model, sync, batch, watchdog, plan, Schedule.of(cfg, plan.n_batches),
              EarlyStopping.of(cfg), run_id=run_id, lock=lock, trace=tracer)
    model.trace = watchdog.trace = tracer
    sync.attach_trace(tracer)
    if faults.PLAN:
        run.sync = faults.FaultySync(sync, run)  # test hook: the planned fault fires inside the step
    if cfg.resume:
        resume_or_release(run)
    return run


def plan_rows(cfg: Config, comm: Comm, data: Dataset, initial: np.ndarray | None,
              ) -> tuple[Dataset, SharedRows | LocalRows, str, MLP, GradientSync]:
    """[dist] Which rows each rank computes at each step, and the model and strategy sized for them.

    Returns (the dataset, the plan, the data's fingerprint or None, the model, the not yet built strategy); with
    --local-rows the dataset is the ranks' agreed one (one scaling, one set of classes)."""
    if cfg.local_rows:  # [dist] each rank's own rows: one dataset's scaling and classes, a plan for them
        data, plan, fingerprint = localdata.agree(data, comm, scale=cfg.scale, batch_size=cfg.batch_size,
                                                  seed=cfg.seed, shuffle=cfg.shuffle)
        cfg.layers = resolve_layers(cfg, data)  # the same on every rank now, and so is any error
        settle_threads(cfg, comm)
        # the strategy and buffers are sized for the largest piece any rank computes in a step
        model, sync = build_agreed(dataclasses.replace(cfg, batch_size=plan.max_rows * comm.size), comm,
                                   layout_of(comm), initial)
        model.dropout_row_offset = sum(plan.counts[:comm.rank])  # dropout's row index: one over all ranks' rows
    else:
        settle_threads(cfg, comm)
        model, sync = build_agreed(cfg, comm, layout_of(comm), initial)
        plan = SharedRows(data.train.n_rows, cfg.batch_size, cfg.seed, sync.my_rows, comm.rank, comm.size,
                          shuffle=cfg.shuffle)
        fingerprint = None  # agree_on_job takes it when there are ranks to compare it with
    return data, plan, fingerprint, model, sync


def agree_on_job(cfg: Config, comm: Comm, model: MLP, plan: SharedRows | LocalRows, data: Dataset,
                 fingerprint: str | None) -> None:
    """[dist] Every rank must run the same job on the same data, or the allreduce silently mixes two jobs.
    fingerprint: the data's (None: taken here); one rank has nothing to compare (a partial_fit call is a job)."""
    if comm.size == 1:
        return
    shared = {k: v for k, v in cfg.to_dict().items() if k not in ("threads", "progress")}
    shared.update(n_params=model.n_params, train_rows=plan.train_rows, features=data.n_features,
                  data_fingerprint=fingerprint if fingerprint is not None else data.fingerprint())
    comm.check_agree("configuration", shared)


def resume_or_release(run: Run) -> None:
    """[dist] --resume: the run's state from its checkpoint; a refused resume leaves the directory to the next job."""
    try:
        with run.watchdog.section("resume", 0):
            resume(run)
    except BaseException:
        release_checkpoint_dir(run)
        raise


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
        data = dataset() if dataset is not None else load_dataset(spec, **dataset_options(cfg))
        if not cfg.local_rows:  # local rows: resolved once the ranks agree on one dataset (localdata)
            cfg.layers = resolve_layers(cfg, data)
            check_data_fits(cfg, data, ranks)
        check_held_out(cfg, data)
    except (ValueError, OSError, DistbpError) as e:
        return None, e
    except MemoryError:
        return None, ConfigError(f"not enough memory to load {cfg.data}")
    return data, None


def dataset_options(cfg: Config) -> dict:
    """The keyword arguments of `load_dataset` for cfg's data and loss: what y is for the loss (kind:
    "classes" for cross_entropy, "multilabel" for binary_cross_entropy, "values" for mse on a file, "auto"
    for mse on a built-in set, whose labels become one-hot rows, or on arrays), its target columns, the
    target scaling, the feature columns (Parquet, HDF5), the output layer --layers gives, and the rows' split,
    feature scaling and weights."""
    builtin = cfg.data.partition(":")[0] in BUILTINS or cfg.data == ARRAYS
    kind = {"cross_entropy": "classes", "binary_cross_entropy": "multilabel"}.get(
        cfg.loss, "auto" if builtin else "values")
    # --layers names the output layer: integer labels that fit it are its class numbers (a set may lack one)
    outputs = cfg.layers[-1] if cfg.layers and kind == "classes" else None
    return {"seed": cfg.seed, "test_fraction": cfg.test_fraction, "scale": cfg.scale, "weights": cfg.weights,
            "targets": cfg.targets, "kind": kind, "scale_targets": cfg.scale_targets, "features": cfg.features,
            "outputs": outputs}


def build_agreed(cfg: Config, comm: Comm, layout: Layout,
                 initial: np.ndarray | None = None) -> tuple[MLP, GradientSync]:
    """The model (from `initial` flat parameters if given) and the (not yet built) strategy; what cannot be
    built, or would not fit in this machine's memory, stops every rank before anything large is allocated.

    cfg.init_from (--init-from): every rank reads that model file, which must be the same network (layer
    sizes, activations, loss), and its parameters win over `initial` (distbp.fit passes its model's own)."""
    err, model, sync = None, None, None
    try:
        shape = ModelShape(tuple(cfg.layers), np.dtype(cfg.dtype), cfg.loss == "cross_entropy",
                           frozenset(l for l, p in enumerate(dropout_probabilities(cfg) or ()) if p > 0))
        sync = make_sync(cfg, layout, shape)
        check_fits_machine(sync)
        activation = cfg.activation.split(",") if "," in cfg.activation else cfg.activation
        # no draw when the parameters come from the caller or a file (a draw of a large model takes seconds)
        model = MLP(cfg.layers, activation=activation, loss=cfg.loss, dtype=cfg.dtype, seed=cfg.seed,
                    init=initial is None and not cfg.init_from, output_activation=cfg.output_activation)
        if cfg.init_from:
            initial = initial_parameters(cfg.init_from, model)  # [dist] a bad file stops every rank below
        if initial is not None:
            if np.shape(initial) != (model.n_params,):
                raise ConfigError(f"the initial parameters have shape {np.shape(initial)}, the model "
                                  f"{'-'.join(map(str, model.sizes))} needs ({model.n_params},)")
            model.flat_params[...] = initial
        set_dropout(model, cfg)
    except (ValueError, DistbpError) as e:
        err = e
    comm.agree_on_failure(err)  # [dist]
    return model, sync


def settle_threads(cfg: Config, comm: Comm) -> None:
    """cfg.threads None (nobody asked for a count): distbp's default, or 1 for a step too small to share
    (host/threads.step_threads: the rank's rows of a global batch through the model); the pools are set now."""
    if cfg.threads is not None:
        return
    rows = -(-cfg.batch_size // comm.size)
    cfg.threads = threads.step_threads(threads.default_threads(), layer_slices_of(cfg.layers)[-1].stop, rows)
    threads.set_threads(cfg.threads)


def set_dropout(model: MLP, cfg: Config) -> None:
    """The model's dropout in training from cfg.dropout (see `dropout_probabilities`)."""
    probabilities = dropout_probabilities(cfg)
    if probabilities:
        model.dropout, model.dropout_seed = probabilities, cfg.seed


def dropout_probabilities(cfg: Config) -> list[float] | None:
    """Each hidden layer's drop probability from cfg.dropout: one for every hidden layer, or one each."""
    if not cfg.dropout:
        return None
    hidden = len(cfg.layers) - 2
    probabilities = list(cfg.dropout) * hidden if len(cfg.dropout) == 1 else list(cfg.dropout)
    if len(probabilities) != hidden:
        raise ConfigError(f"--dropout gives {len(cfg.dropout)} probabilities for {hidden} hidden layer(s): give "
                          "one for all, or one per hidden layer")
    return probabilities


def layout_of(comm: Comm) -> Layout:
    """Collective: this rank's place in the job."""
    return Layout(comm.rank, comm.size, tuple(comm.node_sizes()))


def heartbeat_dir(cfg: Config, comm: Comm) -> str | None:
    """Collective: where the watchdogs leave heartbeats: beside the checkpoints (shared by every node), else a
    folder in this machine's temp folder that the root makes with a name nobody can predict (mkdtemp, 0700) and
    shares (enough when all ranks share a node). Every rank checks it is a real folder of its own (made, 0700,
    where missing) before use: one that is not (a symlink, another user's) stops every rank, named."""
    if cfg.timeout <= 0 or comm.size == 1:
        return None
    if cfg.checkpoint_dir:
        path = os.path.join(cfg.checkpoint_dir, ".heartbeat")
    else:
        made, err = None, None
        if comm.is_root:
            remove_abandoned_heartbeats(tempfile.gettempdir())  # of earlier jobs on this host that ended abnormally
            try:
                made = tempfile.mkdtemp(prefix=HEARTBEAT_PREFIX)
            except OSError as e:
                err = DistbpError(f"cannot make a heartbeat folder in {tempfile.gettempdir()} ({e.strerror})")
        comm.agree_on_failure(err)  # [dist]
        path = os.path.join(tempfile.gettempdir(), os.path.basename(comm.allgather_object(made)[0]))  # [dist]
    err = None
    try:
        make_private_dir(path, "the heartbeat folder")
    except UnsafeFolder as e:
        err = e
    except OSError as e:
        err = DistbpError(f"the heartbeat folder {path}: cannot be made ({e.strerror})")
    comm.agree_on_failure(err)  # [dist] one rank's unsafe folder stops every rank, named
    return path


def resolve_layers(cfg: Config, data: Dataset) -> list[int]:
    """The layer sizes: --layers checked against the data's features and targets, else features-256-outputs.

    The outputs the loss needs of the data: cross_entropy one per class (at least the largest class number
    + 1 for labels that are class numbers, exactly one per label for named classes), binary_cross_entropy one
    per 0/1 target (1 for a binary one), mse one per float target (or one-hot class)."""
    outputs = data.n_targets
    layers = list(cfg.layers) if cfg.layers else [data.n_features, 256, outputs]
    if layers[0] != data.n_features:
        raise ConfigError(f"--layers starts with {layers[0]} inputs but {cfg.data} has {data.n_features} features")
    last, kind = layers[-1], data.kind
    if cfg.loss == "cross_entropy":
        if kind == "values":
            raise ConfigError(f"{cfg.data} has float targets (regression): use --loss mse")
        if kind == "multilabel":
            raise ConfigError(f"{cfg.data} has 0/1 targets, {data.n_targets} per row (multilabel or binary): use "
                              "--loss binary_cross_entropy")
        if data.classes is not None and last != data.n_classes:
            raise ConfigError(f"--layers ends with {last} outputs but {cfg.data} has {data.n_classes} classes "
                              f"{show(data.classes)}: one output per class (labels that are not class numbers "
                              "0…K−1 map through their sorted set)")
        if last < data.n_classes:
            raise ConfigError(f"--layers ends with {last} outputs but {cfg.data} has labels up to "
                              f"{data.n_classes - 1} ({data.n_classes} classes)")
    elif cfg.loss == "binary_cross_entropy":
        if kind != "multilabel":
            what = (f"{data.n_classes} classes, one per row: use --loss cross_entropy" if kind == "classes"
                    else "float targets (regression): use --loss mse")
            raise ConfigError(f"--loss binary_cross_entropy takes 0/1 targets (a (rows, k) 0/1 matrix, or one "
                              f"column of two labels), and {cfg.data} has {what}")
        if last != data.n_targets:
            raise ConfigError(f"--layers ends with {last} outputs but {cfg.data} has {data.n_targets} 0/1 target(s): "
                              "binary_cross_entropy has one output per target")
    elif kind == "classes" and last != data.n_classes:
        raise ConfigError(f"--loss mse on class labels needs {data.n_classes} outputs (one-hot), got {last}")
    elif kind != "classes" and last != data.n_targets:
        why = (" (with --loss mse a file's target columns are float targets, never one-hot classes; --targets names "
               "them)" if kind == "values" and data.kind_asked == "values" else "")
        raise ConfigError(f"--layers ends with {last} outputs but {cfg.data} has {data.n_targets} targets{why}")
    return layers


def check_held_out(cfg: Config, data: Dataset) -> None:
    """--eval-every, --early-stop-patience and --save-best evaluate on held-out rows: there must be some (the
    Python API trains without any unless given validation=)."""
    asked = [f for f, v in (("--eval-every", cfg.eval_every), ("--early-stop-patience", cfg.early_stop_patience),
                            ("--save-best", cfg.save_best)) if v]
    if asked and data.test is None:
        raise ConfigError(f"{', '.join(asked)}: evaluations need held-out rows, and {cfg.data} has none "
                          "(--test-fraction 0 holds none out; distbp.fit: give validation=)")
    watched = cfg.early_stop_patience or cfg.save_best
    if watched and cfg.early_stop_metric not in METRICS[data.kind]:
        what = {"classes": "class labels", "multilabel": "0/1 targets (multilabel)",
                "values": "float targets (regression)"}[data.kind]
        raise ConfigError(f"--early-stop-metric {cfg.early_stop_metric}: {cfg.data} has {what}, whose held-out "
                          f"metrics are {', '.join(METRICS[data.kind])}")


def check_data_fits(cfg: Config, data: Dataset, ranks: int) -> None:
    n = data.train.n_rows
    if n < ranks:
        raise ConfigError(f"{cfg.data} has {n} training rows, fewer than the {ranks} ranks: every rank needs data")
