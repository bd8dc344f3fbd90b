"""The gradient-sync interface: one object per mode owns how shard gradients become one update.

A strategy is made in two steps. `__init__` takes only sizes (the options the factory read from the
configuration, this rank's place in the job and the model's shape) and allocates nothing, so that
`--dry-run` can ask it for its rows and its memory; `build(comm, model)` allocates what it said.
In a training step the loop calls, in this order:

    r0, r1 = sync.my_rows(B)                       which rows of a global batch of B rows this rank computes
    loss, correct = sync.local_gradient(gather, rows, B)
                                                   Σ lⁿ, correct count and Σ ∂lⁿ/∂θ over those rows; the sum
                                                   over ranks may start while the backward pass runs
    sync.finish()                                  [dist] ∇L (or this rank's part of it) is complete
    sync.all_finite()                              this rank's share of ∇L has no NaN/Inf
    sync.apply(params, scale)   or  sync.nonfinite_layers()      the update, or which layers are bad

`apply` clips first with --clip-grad-norm c (`NormClip`): when ‖scale·∇L‖₂ > c, scale becomes
scale·c/‖scale·∇L‖, so the update sees a gradient of norm c. The norm is global (all parameters) and the
same on every rank: replicated strategies take it from the whole ∇L, the sharded one from its part's
sum of squares and one scalar allreduce. `stats["grad_norm"]` is the epoch's mean norm (before clipping).

Everything else a mode decides lives here too: `rows_at_once` (rows of one forward/backward, which
sizes the gather buffers and the model's workspace), `memory()`, `describe()`, `stats`, and what it
adds to a checkpoint (`checkpoint_state` / `load_checkpoint_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from distbp.comm.base import Comm
from distbp.data.shard import max_shard_rows, rank_slice
from distbp.nn import kernels
from distbp.nn.grain import sized
from distbp.nn.model import MLP, layer_slices_of
from distbp.nn.optim import OPTIMIZERS, Segments, make_optimizer, segments_of

# gather(rows, into=None) -> (X, y, w): the training rows `rows` (int64 indices) as views of this rank's
# buffers, or of `into` (a distbp.train.run.BatchBuffers of the strategy's own, for threads gathering at once)
Gather = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray | None]]  # (X, y, w): w None without weights


@dataclass(frozen=True)
class Layout:
    """Where this rank is: its rank, the rank count, and the ranks on each node (nodes in rank order)."""

    rank: int = 0
    size: int = 1
    node_sizes: tuple[int, ...] = (1,)

    @property
    def single_node(self) -> bool:
        return len(self.node_sizes) == 1

    @property
    def even_nodes(self) -> bool:
        """Every node runs the same number of ranks (what the hierarchical allreduce needs)."""
        return len(set(self.node_sizes)) == 1


@dataclass(frozen=True)
class ModelShape:
    """The model as far as sizes go: layer sizes, dtype, integer labels (True) or float targets, and the hidden
    layers dropout masks (each has a buffer of its masked activations)."""

    sizes: tuple[int, ...]
    dtype: np.dtype
    labels: bool = True
    dropped: frozenset = frozenset()

    @property
    def n_params(self) -> int:
        return self.layer_slices[-1].stop

    @property
    def layer_slices(self) -> list[slice]:
        return layer_slices_of(self.sizes)


@dataclass(frozen=True)
class SyncOptions:
    """What strategies need from the configuration; the factory (`distbp.sync`) is the only reader of
    the mode flags and fills this."""

    batch_size: int
    accumulate: int = 1  # micro-batches per rank share, one sum over ranks per global batch
    bucket_bytes: int = 4 << 20
    overlap: bool = True
    comm_dtype: str | None = None  # 16-bit codec for the allreduce (distbp.comm.codecs)
    transport: str = "mpi"  # the bucketed allreduce's transport, a name in distbp.sync.transports.TRANSPORTS
    micro_batch: int = 32  # rows per fixed micro-block (exact sums)
    threads: int | None = None  # threads of this rank (None: what Numba has)
    optimizer: str = "gd"
    lr: float = 1e-3
    optimizer_options: dict = field(default_factory=dict)  # momentum, trust, weight_decay, decay_biases
    clip_grad_norm: float = 0.0  # c: ∇L's global norm is clipped to c (0: off)

    def make_optimizer(self, n: int, dtype, segments: Segments | None = None, sum_over_ranks=None):
        """The configured optimizer for a flat buffer of n elements: `segments` says which layer's W or b each
        element is, `sum_over_ranks` completes per-layer sums when the buffer is one rank's part
        (distbp.nn.optim)."""
        return make_optimizer(self.optimizer, n, dtype, self.lr, segments=segments, sum_over_ranks=sum_over_ranks,
                              **self.optimizer_options)

    def optimizer_state_bytes(self, n: int, dtype) -> int:
        return OPTIMIZERS[self.optimizer].state_copies * n * np.dtype(dtype).itemsize


class GradientSync:
    """One mode's way from shard gradients to the update; see the module docstring for the protocol."""

    name = "?"  # the registry name

    def __init__(self, options: SyncOptions, layout: Layout, shape: ModelShape):
        self.options, self.layout, self.shape = options, layout, shape
        self.comm: Comm | None = None
        self.model: MLP | None = None
        self.clip = NormClip(options.clip_grad_norm)

    # ---- sizes: known before anything is allocated ------------------------------------------------
    def my_rows(self, batch_rows: int) -> tuple[int, int]:
        """(start, stop) of this rank's contiguous share of a global batch of batch_rows rows."""
        return rank_slice(batch_rows, self.layout.rank, self.layout.size)

    @property
    def rows_at_once(self) -> int:
        """Rows of the largest forward/backward this rank runs (gather buffers and model workspace)."""
        return max_shard_rows(self.options.batch_size, self.layout.size)

    def memory(self) -> dict[str, int]:
        """Bytes this strategy allocates in build(): gradients, optimizer_state, allreduce_scratch, and any
        activations or batch_buffers beyond the model's workspace and the run's buffers."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the start-up header: the reduction, its transport and overlap, the update."""
        raise NotImplementedError

    # ---- the job --------------------------------------------------------------------------------------
    def build(self, comm: Comm, model: MLP) -> None:
        """Allocate the buffers, reducer and optimizer (collective: may create communicators)."""
        self.comm, self.model = comm, model
        model.reserve_workspace(self.rows_at_once)

    def local_gradient(self, gather: Gather, rows: np.ndarray, batch_rows: int) -> tuple[float, float]:
        """(Σ loss, correct) over this rank's rows; the rows' gradient is on its way to the sum over ranks."""
        raise NotImplementedError

    def finish(self) -> None:
        """[dist] Complete the sum over ranks."""

    def all_finite(self) -> bool:
        """No NaN/Inf in this rank's share of ∇L (the loop agrees the verdict over ranks)."""
        raise NotImplementedError

    def nonfinite_layers(self) -> list[str]:
        """Collective: 'layer l dW|db' for each layer with NaN/Inf anywhere in ∇L, in layer order."""
        raise NotImplementedError

    def apply(self, params: np.ndarray, scale: float) -> None:
        """θ ← update(θ, scale·∇L), the same on every rank."""
        raise NotImplementedError

    def set_lr(self, lr: float) -> None:
        """η of the next updates (the learning-rate schedule's, distbp.train.schedule)."""
        self.optimizer.lr = lr

    # ---- checkpoints ----------------------------------------------------------------------------------
    @property
    def optimizer_steps(self) -> int:
        raise NotImplementedError

    def checkpoint_state(self) -> tuple[dict[str, np.ndarray | None], dict]:
        """Collective: (arrays, meta) to store; the arrays are whole on the root (None elsewhere if sharded)."""
        raise NotImplementedError

    def load_checkpoint_state(self, arrays: dict[str, np.ndarray], meta: dict, optimizer_steps: int) -> None:
        """Restore from what checkpoint_state stored (written by any rank count)."""
        raise NotImplementedError

    @property
    def stats(self) -> dict:
        """Counters for the metrics since the last reset_stats (overlap_s: seconds of overlapped communication;
        with --clip-grad-norm, grad_norm: the mean ‖scale·∇L‖₂ before clipping, clipped_steps)."""
        return self.clip.stats()

    def reset_stats(self) -> None:
        """Start the counters of a new epoch."""
        self.clip.reset_stats()

    def kernel_key(self) -> dict:
        """What of this strategy selects the Numba kernels a run calls (part of distbp.train.warmup's key): the
        strategy, the optimizer's options (a flag per option: on or off), the clip, and the 16-bit codec."""
        options = {k: (v if isinstance(v, (bool, str)) else v != 0)
                   for k, v in self.options.optimizer_options.items()}
        return dict(strategy=type(self).__name__, options=sorted(options.items()), clip=bool(self.clip.max_norm),
                    comm_dtype=self.options.comm_dtype)

    def warm_up(self) -> None:
        """Call this strategy's own Numba kernels once on tiny arrays (distbp.train.warmup; default: the clip's norm)."""
        if self.clip.max_norm:
            kernels.sum_of_squares(np.zeros(4, self.shape.dtype))

    def attach_trace(self, tracer) -> None:
        """--trace: record this strategy's communication on `tracer` (default: nothing of its own)."""

    def close(self) -> None:
        """Collective, at the job's normal end: give back what build() took beyond numpy memory (shared
        windows). A job that ends otherwise leaves it to the process's end."""


class ReplicatedUpdate:
    """The part of a strategy whose ranks all hold the whole ∇L (`self.grad`) and apply the whole update
    with `self.optimizer`; mixed into GradientSync subclasses (allreduce, exact)."""

    grad: np.ndarray
    optimizer: object
    shape: ModelShape
    options: SyncOptions
    clip: NormClip

    def all_finite(self) -> bool:
        return bool(sized(kernels.all_finite, self.grad.size)(self.grad))

    def nonfinite_layers(self) -> list[str]:
        # every rank holds the same ∇L: no communication needed
        return layers_with_nonfinite(np.flatnonzero(~np.isfinite(self.grad)), self.shape.sizes)

    def apply(self, params: np.ndarray, scale: float) -> None:
        if self.clip.max_norm:
            # every rank holds the same ∇L and sums it in the same fixed order: the same norm everywhere
            scale = self.clip.clipped_scale(scale, sized(kernels.sum_of_squares, self.grad.size)(self.grad))
        self.optimizer.step(params, self.grad, scale)

    def build_optimizer(self, model: MLP):
        """The configured optimizer over all of θ, which this rank updates whole."""
        return self.options.make_optimizer(model.n_params, model.dtype, segments_of(model.sizes))

    @property
    def optimizer_steps(self) -> int:
        return self.optimizer.step_count

    def checkpoint_state(self):
        return self.optimizer.state_arrays(), self.checkpoint_meta()

    def checkpoint_meta(self) -> dict:
        """What the strategy keeps beside the optimizer state (JSON)."""
        return {}

    def load_checkpoint_state(self, arrays, meta, optimizer_steps) -> None:
        self.optimizer.load_state(arrays, optimizer_steps)


class NormClip:
    """--clip-grad-norm c: the scale that brings ‖scale·∇L‖₂ down to c, and the epoch's norms for the metrics."""

    def __init__(self, max_norm: float):
        self.max_norm = max_norm  # 0: off (the strategies then never ask, and no norm is computed)
        self.last_norm: float | None = None
        self.reset_stats()

    def clipped_scale(self, scale: float, sum_of_squares: float) -> float:
        """scale·min(1, c/‖scale·∇L‖) from Σ (∇L)² over all parameters (float64, the same on every rank)."""
        norm = abs(scale) * float(np.sqrt(sum_of_squares))
        self.last_norm = norm
        self._sum += norm
        self._steps += 1
        if norm > self.max_norm:
            self._clipped += 1
            return scale * (self.max_norm / norm)
        return scale

    def stats(self) -> dict:
        if not self.max_norm:
            return {}
        return {"grad_norm": self._sum / self._steps if self._steps else None, "clipped_steps": self._clipped}

    def reset_stats(self) -> None:
        self._sum, self._steps, self._clipped = 0.0, 0, 0


def layers_with_nonfinite(bad: np.ndarray, sizes: tuple[int, ...]) -> list[str]:
    """'layer l dW' / 'layer l db' for every layer holding one of the flat indices `bad` (int64, any order)."""
    names = []
    for l, (sl, fi, fo) in enumerate(zip(layer_slices_of(sizes), sizes[:-1], sizes[1:])):
        w_end = sl.start + fi * fo
        if ((bad >= sl.start) & (bad < w_end)).any():
            names.append(f"layer {l} dW")
        if ((bad >= w_end) & (bad < sl.stop)).any():
            names.append(f"layer {l} db")
    return names
