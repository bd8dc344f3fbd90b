"""Start-up: compile the Numba kernels a run needs before its first step, once per machine, and say so.

Numba compiles a kernel the first time it is called with new argument types and keeps the machine
code in NUMBA_CACHE_DIR. Left to the first step, that compilation (10-20 s on an empty cache) was
counted as training, and every rank compiled the same kernels at once: 4 ranks on 2 cores took 4
ranks' compile time. `shared_warmup` lets the root compile first (on 2 rows: every kernel a step and
an evaluation call, for this run's dtype, activations, loss, optimizer and strategy), then the other
ranks, which find the kernels in the shared cache and only load them. `CompileCounter` counts what
each rank compiled, from Numba's own "numba:compile" events.

Loading is not free either (about 0.2 s for a run's kernels, after Numba's own 0.5 s first use), and
one rank after another it added up. So a warm-up that completes leaves a marker in the cache
(`distbp-warm/<key>`, the key naming what selects the kernels: Numba, the CPU, distbp's sources, dtype,
activations, which backward kernel each hidden layer takes, loss, optimizer and strategy); when every
rank finds the marker for its run, all load at once. A stale marker costs time, never correctness: Numba checks its cache entries itself and compiles
what is missing. `distbp warmup` (`warm_configuration`) fills the cache and the marker for one
configuration without training, e.g. at install (launch/setup runs it for the demo's configuration).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import numba
import numpy as np
from llvmlite import binding as llvm
from numba.core import event

from distbp.comm.serial import SerialComm
from distbp.data import datasets as data
from distbp.errors import StallError
from distbp.nn import grain, kernels
from distbp.nn.model import MLP, narrow_layers
from distbp.nn.optim import make_optimizer
from distbp.train.setup import dataset_options, setup

ROWS = 2  # rows of the warm-up pass: enough to call every kernel
COMPILE_WAIT_S = 600.0  # how long the other ranks wait for rank 0's compilation
# the keys whose kernels this process has warmed: Numba keeps a dispatcher's compiled code for the process's life,
# so a second run of the same kernels (each partial_fit call, a fit in a loop) skips the warm-up's passes
_WARM_HERE: set[str] = set()


class CompileCounter(event.Listener):
    """Numba compilations (outermost only) and their seconds, while registered."""

    def __init__(self):
        self.compiled, self.seconds, self._depth, self._t0 = 0, 0.0, 0, 0.0

    def on_start(self, _):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def on_end(self, _):
        self._depth -= 1
        if self._depth == 0:
            self.compiled += 1
            self.seconds += time.perf_counter() - self._t0

    def __enter__(self) -> "CompileCounter":
        event.register("numba:compile", self)
        return self

    def __exit__(self, *exc) -> None:
        event.unregister("numba:compile", self)


def stand_in_sizes(sizes) -> list[int]:
    """Layer sizes of a tiny model whose step calls the very kernels a model of `sizes` calls: the kernels depend
    on the dtype, the activations, the loss and which layers are narrow (kernels.NARROW_WIDTH), not on sizes."""
    return [min(sizes[0], 2)] + [s if s <= kernels.NARROW_WIDTH else kernels.NARROW_WIDTH + 1 for s in sizes[1:]]


def warm_kernels(model, optimizer: str, sync, data=None) -> None:
    """Call every kernel of a step and an evaluation once on ROWS zero rows; changes no parameter or state.
    data (a Dataset): its splits' row gathers too, on no rows (their kernel depends on the data's dtype).

    The passes run on a tiny stand-in of `model` (`stand_in_sizes`), so the warm-up allocates kilobytes, not
    a second gradient of the model's size that --dry-run would have to count."""
    dropout = model.dropout
    model = MLP(stand_in_sizes(model.sizes), model.activation_names, model.loss.name, str(model.dtype),
                output_activation=model.loss.output_activation)
    model.dropout = dropout  # the same dropped layers: the same kernels, and the same wide backward paths
    X = np.zeros((ROWS, model.sizes[0]), model.dtype)
    y = (np.zeros(ROWS, np.int64) if model.loss.labels else np.zeros((ROWS, model.sizes[-1]), model.dtype))
    grad = np.zeros(model.n_params, model.dtype)
    ws = model.new_workspace(ROWS)  # its own buffers: the model's are left as they are
    model.loss_and_grad_into(X, y, grad, workspace=ws, validate=False, rows=np.arange(ROWS, dtype=np.int64))
    kernels.all_finite(grad)  # the strategies' finite check of ∇L
    params = np.zeros(4, model.dtype)
    # the run's optimizer options: weight decay and the layer-wise optimizers have kernels of their own
    options = sync.options.optimizer_options
    make_optimizer(optimizer, 4, model.dtype, lr=1e-3, **options).step(params, np.zeros(4, model.dtype), 1.0)
    model.loss_into(X, y, workspace=ws)  # evaluation's pass
    model.count_correct(y, workspace=ws)
    sync.warm_up()
    for split in splits_of(data):
        split.warm_gather(model.dtype)
    grain.compile_twins()  # the tiny arrays above took the serial twins: the parallel kernels of a step too


def splits_of(data) -> list:
    """The training and held-out splits of a Dataset (none for None)."""
    return [] if data is None else [s for s in (data.train, data.test) if s is not None]


def warm_key(model, optimizer: str, sync, data=None) -> str:
    """A digest of what selects the kernels `warm_kernels` calls (and what makes Numba's cache stale)."""
    sources = source_stamps()
    backward = backward_kernels(model.sizes, model.activation_names)
    # the strategy says what of it selects kernels (strategy, optimizer options, clip, codec)
    what = dict(numba=numba.__version__, cpu=host_cpu(), sources=sources, dtype=str(model.dtype),
                activations=sorted(set(model.activation_names)), backward=backward, loss=model.loss.name,
                output=model.loss.output_activation,
                dropout=sorted(model.dropped_layers()),
                optimizer=optimizer, gather=sorted({s.gather_kernel_types(model.dtype) for s in splits_of(data)}),
                **sync.kernel_key())
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def host_cpu() -> str:
    """LLVM's name of this CPU (what Numba compiles for), once per process: 0.06 ms a call through llvmlite."""
    return llvm.get_host_cpu_name()


@functools.lru_cache(maxsize=1)
def source_stamps() -> str:
    """A digest of (path, size, mtime) of distbp's sources, once per process (3 ms a call, most of a small
    partial_fit's start-up; a digest, so that each warm key does not encode a hundred stamps again): a source
    changed under a running process costs a stale key, which costs time, never bits."""
    package = Path(__file__).resolve().parents[1]
    stamps = sorted((str(f.relative_to(package)), f.stat().st_size, f.stat().st_mtime_ns)
                    for f in package.rglob("*.py"))
    return hashlib.sha256(json.dumps(stamps).encode()).hexdigest()


def backward_kernels(sizes, activations) -> list[tuple[str, str]]:
    """Which backward kernel each hidden layer's δ takes, as sorted (kind, activation) pairs: "narrow" below
    a layer at most kernels.NARROW_WIDTH wide (kernels.narrow_backward), else "wide" (activation_backward)."""
    narrow = {l for l, _ in narrow_layers(sizes)}  # the model's own rule, so the key cannot drift from it
    return sorted({("narrow" if l in narrow else "wide", activations[l - 1]) for l in range(1, len(sizes) - 1)})


def warm_both_backward_kernels(model) -> None:
    """Both backward kernels of each of the model's activations, whichever its widths pick."""
    z, db, partial = np.zeros((ROWS, 1), model.dtype), np.zeros(1, model.dtype), np.zeros((1, 1), model.dtype)
    for name in sorted(set(model.activation_names)):
        kernels.activation_backward_for(name)(z, z.copy(), z.copy(), db, partial)
        kernels.narrow_backward_for(name)(z, z.copy(), np.zeros((1, 1), model.dtype), z.copy(), db, partial)


def marker_path(key: str) -> Path:
    """The file that says a warm-up of `key` completed into this process's Numba cache."""
    cache = numba.config.CACHE_DIR or str(Path(__file__).resolve().parent / "__pycache__")
    return Path(cache) / "distbp-warm" / key


def mark_warm(key: str) -> None:
    """Leave the marker for `key` (atomically: a reader sees no file or a whole one). Best effort: a cache
    we cannot write to only means the next run loads one rank after another."""
    path = marker_path(key)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"numba {numba.__version__}\n")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def shared_warmup(run) -> dict:
    """[dist] The root compiles the run's kernels, then the others load them (all ranks at once when every
    rank finds the cache marked warm); returns per-rank figures (rank -> {"compiled", "compile_s", "seconds",
    "together"}) on every rank."""
    comm = run.comm
    t0 = time.perf_counter()
    key = warm_key(run.model, run.cfg.optimizer, run.sync, run.data)
    found = comm.allgather_object((marker_path(key).exists(), key in _WARM_HERE))  # [dist]
    if all(here for _, here in found):  # every rank has these kernels in memory already
        mine = {"compiled": 0, "compile_s": 0.0, "seconds": time.perf_counter() - t0, "together": True}
        return {r: dict(mine) for r in range(comm.size)}
    together = all(marked for marked, _ in found)
    with CompileCounter() as counter:
        if together or comm.rank == 0:
            warm_kernels(run.model, run.cfg.optimizer, run.sync, run.data)
        # the others wait while the root writes the cache (or, marked warm, while any rank that found a kernel
        # missing compiles it): a long phase, bounded on its own, and waited for by polling with sleeps, so
        # that waiting ranks do not spin on the cores the compiler needs
        with run.watchdog.section("compiling kernels", 0, at_least=COMPILE_WAIT_S):
            if not comm.barrier_within(COMPILE_WAIT_S):
                raise StallError(f"rank {comm.rank}: the kernels were not compiled within {COMPILE_WAIT_S:g} s "
                                 f"(is rank {0 if not together else 'another'} stalled?)")
        if not together and comm.rank != 0:
            warm_kernels(run.model, run.cfg.optimizer, run.sync, run.data)
    if comm.rank == 0 and not together:
        mark_warm(key)
    _WARM_HERE.add(key)
    mine = {"compiled": counter.compiled, "compile_s": counter.seconds, "seconds": time.perf_counter() - t0,
            "together": together}
    return dict(enumerate(comm.allgather_object(mine)))


def warm_configuration(cfg) -> dict:
    """`distbp warmup`: compile (or load) the kernels a run of `cfg` needs into the cache and mark it warm,
    without training; returns {"compiled", "compile_s", "seconds", "key", "data", "data_s", "data_spec"}.

    A large generated dataset (cfg.data, e.g. the default synthetic one) is drawn into the data cache first
    ("data": its folder, "data_s": seconds; None and the time of finding out for any other data).

    The kernels do not depend on sizes, only on whether a layer is narrow (kernels.NARROW_WIDTH): a tiny
    synthetic dataset with cfg's layer count stands in for the data, with wide hidden layers and a narrow output
    (a classifier's), and both backward kernels are compiled whatever the real widths. The mark is for the
    stand-in's key: a run whose output is wide finds every kernel but not the mark (its ranks load one after
    another).
    """
    hidden = [kernels.NARROW_WIDTH + 1] * (len(cfg.layers) - 2 if cfg.layers else 1)
    stand_in = dataclasses.replace(
        cfg, data="synthetic:rows=64,features=4,classes=3,test=8", layers=[4, *hidden, 3], local_rows=False,
        init_from=None, epochs=1, save=None, save_best=None, metrics=None, trace=None, trace_steps=None,
        checkpoint_dir=None, resume=False, progress="none", timeout=0, batch_size=8, micro_batch=4,
        accumulate=min(cfg.accumulate, 2), eval_every=0, early_stop_patience=0)
    t0 = time.perf_counter()
    entry = data.cache_entry(cfg.data, cfg.seed, cfg.test_fraction)
    own = None
    if entry is not None:  # the run's own generated data, drawn now into the data cache (distbp.data.cache)
        own = data.load_dataset(cfg.data, **dataset_options(cfg))
        if not own.from_cache:  # just drawn, in memory: a run maps it from the cache (read-only, other kernels)
            own = data.load_dataset(cfg.data, **dataset_options(cfg))
    data_s = time.perf_counter() - t0
    run = setup(stand_in, SerialComm())
    # the row gather's kernel depends on the data's dtype and layout (a cached set is memory-mapped, read-only):
    # the run's own data where it was drawn, else the stand-in's
    rows_of = own if own is not None else run.data
    try:
        t0 = time.perf_counter()
        with CompileCounter() as counter:
            warm_kernels(run.model, stand_in.optimizer, run.sync, rows_of)
            warm_both_backward_kernels(run.model)
        key = warm_key(run.model, stand_in.optimizer, run.sync, rows_of)
        mark_warm(key)
        return {"compiled": counter.compiled, "compile_s": counter.seconds, "seconds": time.perf_counter() - t0,
                "key": key, "data": entry if entry is not None and entry.is_dir() else None, "data_s": data_s,
                "data_spec": cfg.data}
    finally:
        run.sync.close()
        run.watchdog.stop()


def startup_line(seconds: float, figures: dict) -> str:
    """'distbp: start-up 12.3 s (rank 0 compiled 24 kernels in 10.1 s; 3 ranks loaded them from the cache)'."""
    root = figures[0]
    others = [f for r, f in figures.items() if r != 0]
    if root["compiled"] == 0 and not any(f["compiled"] for f in others):
        what = "every kernel loaded from the cache" + (", by all ranks at once" if others and root["together"] else "")
    else:
        what = f"rank 0 compiled {root['compiled']} kernel(s) in {root['compile_s']:.1f} s"
        if others:
            again = sum(f["compiled"] for f in others)
            what += (f"; the other {len(others)} rank(s) loaded them from the cache" if again == 0 else
                     f"; the other {len(others)} rank(s) compiled {again} more")
    return f"distbp: start-up {seconds:.1f} s ({what})"
