"""Start-up: compile the Numba kernels a run needs before its first step, once per machine, and say so.

Numba compiles a kernel the first time it is called with new argument types and keeps the machine
code in NUMBA_CACHE_DIR. Left to the first step, that compilation (10-20 s on an empty cache) was
counted as training, and every rank compiled the same kernels at once: 4 ranks on 2 cores took 4
ranks' compile time. `shared_warmup` lets the root compile first (on 2 rows: every kernel a step and
an evaluation call, for this run's dtype, activations, loss, optimizer and strategy), then the other
ranks, which find the kernels in the shared cache and only load them. `CompileCounter` counts what
each rank compiled, from Numba's own "numba:compile" events.
"""

from __future__ import annotations

import time

import numpy as np
from numba.core import event

from distbp import kernels
from distbp.errors import StallError
from distbp.optim import make_optimizer

ROWS = 2  # rows of the warm-up pass: enough to call every kernel
COMPILE_WAIT_S = 600.0  # how long the other ranks wait for rank 0's compilation


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


def warm_kernels(model, optimizer: str, sync) -> None:
    """Call every kernel of a step and an evaluation once on ROWS zero rows; changes no parameter or state."""
    X = np.zeros((ROWS, model.sizes[0]), model.dtype)
    y = (np.zeros(ROWS, np.int64) if model.loss.labels else np.zeros((ROWS, model.sizes[-1]), model.dtype))
    grad = np.zeros(model.n_params, model.dtype)
    ws = model.new_workspace(ROWS)  # its own buffers: the model's are left as they are
    model.loss_and_grad_into(X, y, grad, workspace=ws, validate=False)
    kernels.all_finite(grad)  # the strategies' finite check of ∇L
    params = np.zeros(4, model.dtype)
    # the run's optimizer options: weight decay and the layer-wise optimizers have kernels of their own
    options = sync.options.optimizer_options
    make_optimizer(optimizer, 4, model.dtype, lr=1e-3, **options).step(params, np.zeros(4, model.dtype), 1.0)
    model.loss_into(X, y, workspace=ws)  # evaluation's pass
    model.count_correct(y, workspace=ws)
    sync.warm_up()


def shared_warmup(run) -> dict:
    """[dist] The root compiles the run's kernels, then the others load them; returns per-rank figures
    (rank -> {"compiled", "compile_s", "seconds"}) on every rank."""
    comm = run.comm
    t0 = time.perf_counter()
    with CompileCounter() as counter:
        if comm.rank == 0:
            warm_kernels(run.model, run.cfg.optimizer, run.sync)
        # the others wait while the root writes the cache: a long phase, bounded on its own, and waited
        # for by polling with sleeps, so that waiting ranks do not spin on the cores the compiler needs
        with run.watchdog.section("compiling kernels", 0, at_least=COMPILE_WAIT_S):
            if not comm.barrier_within(COMPILE_WAIT_S):
                raise StallError(f"rank {comm.rank}: the kernels were not compiled within {COMPILE_WAIT_S:g} s "
                                 "(is rank 0 stalled?)")
        if comm.rank != 0:
            warm_kernels(run.model, run.cfg.optimizer, run.sync)
    mine = {"compiled": counter.compiled, "compile_s": counter.seconds, "seconds": time.perf_counter() - t0}
    return dict(enumerate(comm.allgather_object(mine)))


def startup_line(seconds: float, figures: dict) -> str:
    """'distbp: start-up 12.3 s (rank 0 compiled 24 kernels in 10.1 s; 3 ranks loaded them from the cache)'."""
    root = figures[0]
    others = [f for r, f in figures.items() if r != 0]
    if root["compiled"] == 0 and not any(f["compiled"] for f in others):
        what = "every kernel loaded from the cache"
    else:
        what = f"rank 0 compiled {root['compiled']} kernel(s) in {root['compile_s']:.1f} s"
        if others:
            again = sum(f["compiled"] for f in others)
            what += (f"; the other {len(others)} rank(s) loaded them from the cache" if again == 0 else
                     f"; the other {len(others)} rank(s) compiled {again} more")
    return f"distbp: start-up {seconds:.1f} s ({what})"
