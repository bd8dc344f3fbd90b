"""The data-parallel training loop.

Per global batch (Horovod-style markers show the distributed steps):
  1. every rank gathers its contiguous slice of the batch (`distbp.shard`);
  2. backward on the slice gives Σₙ ∂lⁿ/∂θ over the slice into the flat gradient;
  3. [dist] buckets of the gradient are allreduced (SUM) while backward still runs → ∇L;
  4. every rank applies the same update θ ← θ − η·s·∇L (s = 1, or 1/B with --lr-scale mean).
Only the root prints, writes metrics, checkpoints and the saved model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from distbp import faults, kernels
from distbp.runstate import resume, save
from distbp.comm import Comm, DistbpError
from distbp.config import Config, ConfigError
from distbp.data import Dataset, load_dataset
from distbp.model import MLP
from distbp.optim import make_optimizer
from distbp.sharded import ShardedGradientReducer, ShardedOptimizer
from distbp.progress import Progress
from distbp.reducer import GradientReducer
from distbp.shard import epoch_permutation, global_batches, max_shard_rows, rank_slice
from distbp.watchdog import Watchdog


class NonFiniteError(DistbpError):
    """NaN or Inf in the loss or in ∇L."""


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


@dataclass
class Timers:
    data_s: float = 0.0
    compute_s: float = 0.0
    comm_s: float = 0.0

    def reset(self):
        self.data_s = self.compute_s = self.comm_s = 0.0


@dataclass
class Run:
    """Everything a training run holds; built by `setup`."""

    cfg: Config
    comm: Comm
    data: Dataset
    model: MLP
    optimizer: object
    grad: np.ndarray
    X: np.ndarray  # (rows, features) gather buffer for this rank's slice
    y: np.ndarray  # (rows,) int64 labels or (rows, outputs) float targets
    reducer: object
    watchdog: Watchdog
    acc: np.ndarray | None = None  # gradient of earlier micro-batches (--accumulate)
    pos: Position = field(default_factory=Position)
    timers: Timers = field(default_factory=Timers)
    history: list = field(default_factory=list)


def allreduce_algorithm(cfg: Config, comm: Comm) -> str:
    """Collective: "ring" or "mpi" for the gradient allreduce (--allreduce).

    auto takes distbp's ring when every rank is on one node, where it measured faster than MPICH's
    Iallreduce and needs no message-sized scratch (benchmarks/allreduce.py), and the MPI library's own
    across nodes, where a vendor MPI knows the network's topology and a flat ring pays 2(p−1) latencies.
    """
    if cfg.comm_dtype or cfg.shard_optimizer or cfg.reproducible:
        return "mpi"  # compressed, reduce-scattered and exact sums use MPI's collectives (config forbids ring)
    if cfg.allreduce != "auto":
        return cfg.allreduce
    return "ring" if comm.single_node() else "mpi"


def setup(cfg: Config, comm: Comm) -> Run:
    """Load data, build the model and optimizer, agree across ranks, resume if asked."""
    err = None
    try:
        data = load_dataset(cfg.data, seed=cfg.seed, test_fraction=cfg.test_fraction, scale=cfg.scale)
        layers = resolve_layers(cfg, data)
        check_data_fits(cfg, data, layers, comm.size)
    except (ValueError, OSError, DistbpError) as e:
        err = e
    comm.agree_on_failure(err)  # [dist] one rank's bad file stops every rank, reported once
    cfg.layers = layers
    activation = cfg.activation.split(",") if "," in cfg.activation else cfg.activation
    model = MLP(layers, activation=activation, loss=cfg.loss, dtype=cfg.dtype, seed=cfg.seed)
    # [dist] every rank must run the same job on the same data, or the allreduce silently mixes two jobs
    shared = {k: v for k, v in cfg.to_dict().items() if k not in ("threads", "progress")}
    shared.update(n_params=model.n_params, train_rows=data.train.n_rows, features=data.n_features)
    comm.check_agree("configuration", shared)
    comm.bcast(model.flat_params)  # [dist] identical starting point even if initialisation ever differs
    opt_options = {"momentum": cfg.momentum} if cfg.optimizer == "momentum" else {}
    make = lambda n: make_optimizer(cfg.optimizer, n, model.dtype, cfg.lr, **opt_options)
    optimizer = (ShardedOptimizer(comm, make, model.n_params, model.dtype) if cfg.shard_optimizer
                 else make(model.n_params))
    grad = np.zeros(model.n_params, model.dtype)
    acc = np.zeros(model.n_params, model.dtype) if cfg.accumulate > 1 else None
    rows = -(-max_shard_rows(cfg.batch_size, comm.size) // cfg.accumulate)  # one micro-batch
    if cfg.reproducible:
        rows = max_shard_rows(-(-cfg.batch_size // cfg.micro_batch), comm.size) * cfg.micro_batch
    X = np.empty((rows, data.n_features), model.dtype)
    y = (np.empty(rows, np.int64) if model.loss.labels else np.empty((rows, layers[-1]), model.dtype))
    if cfg.reproducible:
        from distbp.exact import ExactReducer
        reducer = ExactReducer(comm, grad, cfg.micro_batch)
    elif cfg.shard_optimizer:
        reducer = ShardedGradientReducer(comm, grad, model.layer_slices, optimizer.grad_part, optimizer.bounds,
                                         bucket_bytes=int(cfg.bucket_mb * (1 << 20)), overlap=cfg.overlap)
    else:
        reducer = GradientReducer(comm, grad, model.layer_slices, bucket_bytes=int(cfg.bucket_mb * (1 << 20)),
                                  overlap=cfg.overlap, comm_dtype=cfg.comm_dtype,
                                  algorithm=allreduce_algorithm(cfg, comm))
    watchdog = Watchdog(comm, cfg.timeout, heartbeat_dir(cfg, comm))
    run = Run(cfg, comm, data, model, optimizer, grad, X, y, reducer, watchdog, acc=acc)
    if cfg.resume:
        resume(run)
    return run


def heartbeat_dir(cfg: Config, comm: Comm) -> str | None:
    """Where the watchdogs leave heartbeats: beside the checkpoints (shared by every node), else a
    directory in this machine's temp folder, named by the root (enough when all ranks share a node)."""
    if cfg.timeout <= 0 or comm.size == 1:
        return None
    if cfg.checkpoint_dir:
        return os.path.join(cfg.checkpoint_dir, ".heartbeat")
    import tempfile
    import uuid
    name = comm.allgather_object(f"distbp-heartbeat-{uuid.uuid4().hex[:12]}" if comm.is_root else None)[0]
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


def check_data_fits(cfg: Config, data: Dataset, layers: list[int], ranks: int) -> None:
    n = data.train.n_rows
    if n < ranks:
        raise ConfigError(f"{cfg.data} has {n} training rows, fewer than the {ranks} ranks: every rank needs data")


# ---- one step ---------------------------------------------------------------------------------

def train_step(run: Run, rows: np.ndarray, batch_rows: int) -> tuple[float, float]:
    """One global batch: local gradient, [dist] sum over ranks, update. Returns (Σ loss, correct) over ranks."""
    cfg, model, t = run.cfg, run.model, run.timers
    sharded = isinstance(run.optimizer, ShardedOptimizer)
    fault = faults.inject(run.comm.rank, run.pos.step)
    nan_fault = fault == "nan"
    if fault == "desync":
        run.pos.step += 1  # test hook: this rank now counts one step ahead of the others
    data_before = t.data_s
    with run.watchdog.section("gradient allreduce", run.pos.step):
        t1 = time.perf_counter()
        if cfg.reproducible:
            k = rows.shape[0]
            run.data.train.gather(rows, run.X[:k], run.y[:k])
            t.data_s += time.perf_counter() - t1
            if nan_fault and k:
                run.X[0, 0] = np.nan  # test hook: the exact reducer meets a NaN before its allreduce
            loss, correct = run.reducer.compute(model, run.X[:k], run.y[:k], batch_rows, count_correct)
        else:
            hooks = run.reducer
            if nan_fault:
                hooks = faults.NanBeforeAllreduce(hooks, run.grad)  # test hook: before the bucket is sent
            loss, correct = local_gradient(run, rows, hooks=hooks)
        t2 = time.perf_counter()
        if not cfg.reproducible:
            run.reducer.finish()  # [dist] ∇L (sharded: this rank's part of it), identical on every rank
        reduced = run.optimizer.grad_part if sharded else run.grad
        bad = 0.0 if kernels.all_finite(reduced) else 1.0
        step = float(run.pos.step)
        # [dist] one agreed verdict for every rank; Σ step and Σ step² also show whether all ranks
        # are at the same step (p·Σs² − (Σs)² is 0 exactly then, and every rank sees the same value)
        totals = run.comm.sum_scalars([loss, correct, bad, step, step * step])
    t3 = time.perf_counter()
    p = run.comm.size
    if p * totals[4] - totals[3] ** 2 != 0:
        raise DistbpError(f"ranks are out of step: this batch is step {run.pos.step} on rank {run.comm.rank}, "
                          f"but the ranks' mean step is {totals[3] / p:g}; they would mix gradients "
                          "of different batches")
    scale = 1.0 if cfg.lr_scale == "sum" else 1.0 / batch_rows
    if np.isfinite(totals[0]) and totals[2] == 0:
        if sharded:
            with run.watchdog.section("parameter allgather", run.pos.step):
                run.optimizer.step(model.flat_params, scale)
        else:
            run.optimizer.step(model.flat_params, run.grad, scale)
    else:
        where = run.optimizer.nonfinite_parts(model.layer_slices, model.sizes) if sharded else None
        handle_nonfinite(run, totals[0], where)
    t4 = time.perf_counter()
    t.comm_s += t3 - t2
    t.compute_s += (t2 - t1) - (t.data_s - data_before) + (t4 - t3)
    return float(totals[0]), float(totals[1])


def local_gradient(run: Run, rows: np.ndarray, hooks) -> tuple[float, float]:
    """Σ loss, correct and Σ ∂lⁿ/∂θ over this rank's rows into run.grad, in cfg.accumulate micro-batches.

    With K > 1 micro-batches the first K−1 gradients are summed into run.acc and the last one is
    computed into run.grad, each layer's acc added as soon as that layer is done, so the
    allreduce of finished buckets still overlaps the last backward pass.
    """
    model, K, k = run.model, run.cfg.accumulate, rows.shape[0]
    loss = correct = 0.0
    for i in range(K):
        a, b = rank_slice(k, i, K)
        m = b - a
        t0 = time.perf_counter()
        run.data.train.gather(rows[a:b], run.X[:m], run.y[:m])
        run.timers.data_s += time.perf_counter() - t0
        last = i == K - 1
        target = run.grad if (last or i > 0) else run.acc
        h = (AddAccumulated(run.acc, run.grad, model.layer_slices, hooks) if K > 1 else hooks) if last else None
        loss += model.loss_and_grad_into(run.X[:m], run.y[:m], target, hooks=h, progress_chunks=4, validate=False)
        correct += count_correct(model, run.y[:m]) if m else 0.0
        if 0 < i < K - 1:
            run.acc += run.grad
    return loss, correct


class AddAccumulated:
    """Backward hooks for the last micro-batch: grad += acc layer by layer, then pass the news on."""

    def __init__(self, acc: np.ndarray, grad: np.ndarray, layer_slices: list[slice], inner):
        self.acc, self.grad, self.slices, self.inner = acc, grad, layer_slices, inner

    def layer_ready(self, layer: int) -> None:
        sl = self.slices[layer]
        self.grad[sl] += self.acc[sl]
        if self.inner is not None:
            self.inner.layer_ready(layer)

    def progress(self) -> None:
        if self.inner is not None:
            self.inner.progress()


def my_rows(run: Run, batch_rows: int) -> tuple[int, int]:
    """This rank's contiguous share of a global batch (whole micro-blocks with --reproducible)."""
    if run.cfg.reproducible:
        from distbp.exact import block_aligned_slice
        return block_aligned_slice(batch_rows, run.cfg.micro_batch, run.comm.rank, run.comm.size)
    return rank_slice(batch_rows, run.comm.rank, run.comm.size)


def count_correct(model: MLP, y: np.ndarray) -> float:
    """Correct predictions of the last forward pass (labels, or argmax of one-hot targets)."""
    out = model.last_outputs(y.shape[0])
    return float(kernels.count_correct(out, y) if y.ndim == 1 else kernels.count_correct_onehot(out, y))


def handle_nonfinite(run: Run, loss: float, where: list[str] | None = None) -> None:
    """Stop (or skip with --skip-nonfinite) on NaN/Inf; every rank sees the same ∇L, so all decide alike.

    where: the layers with NaN/Inf when already known (sharded ∇L); else found in run.grad.
    """
    if where is None:
        where = []
        for l, (dW, db) in enumerate(run.model.views(run.grad)):
            for name, a in (("dW", dW), ("db", db)):
                if not np.isfinite(a).all():
                    where.append(f"layer {l} {name}")
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

def fit(run: Run) -> list[dict]:
    """Train for cfg.epochs from the current position; returns the per-epoch metrics."""
    cfg, comm, pos = run.cfg, run.comm, run.pos
    n = run.data.train.n_rows
    batches = global_batches(n, cfg.batch_size)
    metrics_file = open_metrics(run)
    while pos.epoch < cfg.epochs:
        perm = epoch_permutation(n, cfg.seed, pos.epoch)
        bar = Progress(len(batches), f"epoch {pos.epoch + 1}/{cfg.epochs}", cfg.progress, comm.is_root)
        t_epoch = time.perf_counter()
        run.timers.reset()
        if hasattr(run.reducer, "reset_stats"):
            run.reducer.reset_stats()
        while pos.batch < len(batches):
            start, stop = batches[pos.batch]
            r0, r1 = my_rows(run, stop - start)
            loss, correct = train_step(run, perm[start + r0:start + r1], stop - start)
            pos.loss_sum += loss
            pos.correct += correct
            pos.seen += stop - start
            pos.batch += 1
            pos.step += 1
            bar.update(pos.batch, pos.loss_sum / pos.seen)
            if cfg.check_every and pos.step % cfg.check_every == 0:
                with run.watchdog.section("parameter check", pos.step):
                    comm.check_identical(run.model.flat_params, pos.step)  # [dist] ranks still agree?
            if cfg.checkpoint_dir and cfg.checkpoint_steps and pos.step % cfg.checkpoint_steps == 0:
                save(run)
        bar.close()
        elapsed = time.perf_counter() - t_epoch
        record = epoch_metrics(run, elapsed)
        run.history.append(record)
        if comm.is_root:
            print(summary_line(record), flush=True)
            if metrics_file:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
        pos.epoch += 1
        pos.batch = 0
        pos.loss_sum = pos.correct = pos.seen = 0.0
        if cfg.checkpoint_dir and (pos.epoch % cfg.checkpoint_every == 0 or pos.epoch == cfg.epochs):
            save(run)
    if metrics_file:
        metrics_file.close()
    return run.history


def epoch_metrics(run: Run, elapsed: float) -> dict:
    pos, t = run.pos, run.timers
    test = evaluate(run) if run.data.test is not None else None
    # [dist] time split: the slowest rank's view decides the step time, so report the max over ranks
    times = run.comm.max_scalar(t.comm_s), run.comm.max_scalar(t.compute_s), run.comm.max_scalar(t.data_s)
    stats = getattr(run.reducer, "stats", {})
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
        "steps": pos.step,
        "skipped_nonfinite": pos.skipped,
        "ranks": run.comm.size,
    }


def evaluate(run: Run) -> tuple[float, float | None]:
    """[dist] Mean loss and accuracy on the test split: each rank scores a contiguous share, sums are allreduced."""
    split, model, comm = run.data.test, run.model, run.comm
    r0, r1 = rank_slice(split.n_rows, comm.rank, comm.size)
    chunk = run.X.shape[0]
    loss_sum = correct = 0.0
    with run.watchdog.section("evaluation", run.pos.step):
        for s in range(r0, r1, chunk):
            rows = np.arange(s, min(s + chunk, r1), dtype=np.int64)
            k = rows.shape[0]
            split.gather(rows, run.X[:k], run.y[:k])
            loss_sum += model.loss_into(run.X[:k], run.y[:k])
            correct += count_correct(model, run.y[:k])
        totals = comm.sum_scalars([loss_sum, correct])
    n = split.n_rows
    return totals[0] / n, (totals[1] / n if run.data.n_classes else None)


def summary_line(r: dict) -> str:
    acc = lambda v: "  -   " if v is None else f"{100 * v:5.1f}%"
    return (f"epoch {r['epoch']:3d}  loss {r['train_loss']:.4f}  train {acc(r['train_accuracy'])}  "
            f"test {acc(r['test_accuracy'])}  {r['samples_per_s']:9.0f} samples/s  "
            f"compute {r['compute_s']:.2f}s comm {r['comm_s']:.2f}s")


def open_metrics(run: Run):
    if not (run.cfg.metrics and run.comm.is_root):
        return None
    os.makedirs(os.path.dirname(os.path.abspath(run.cfg.metrics)), exist_ok=True)
    return open(run.cfg.metrics, "a" if run.cfg.resume else "w")
