"""The multilayer perceptron: parameters in one flat buffer, forward and backward passes.

Layout: batch-major, layer l maps a (n, fan_in) to z = a·W + b (n, fan_out) with
W (fan_in, fan_out) and b (fan_out,). Parameters and gradients each live in one
flat buffer, layer after layer, W then b; `params` / `grads` are views into it,
so an optimizer updates, and an allreduce sends, the whole model in one call.

Backpropagation (mnielsen's notation): the forward pass keeps z and a of every
layer; the backward pass starts from δ = ∂l/∂z at the output (from the loss) and
walks back with δ = σ'(z) ⊙ (δ_next·Wᵀ), dW = aᵀ·δ, db = Σₙ δ, one layer's pass per
function of distbp.nn.layers. The input layer's δ·Wᵀ (= ∂l/∂X) is never computed:
nobody needs it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from distbp.nn import kernels, modelfile
from distbp.nn.grain import lower_blas, restore_blas, sized
from distbp.nn.activations import get_activation
from distbp.nn.layers import (
    BackwardHooks,
    bias_gradient,
    dense_backward,
    dense_forward,
    narrow_dense_backward,
    weight_gradient,
)
from distbp.nn.losses import get_loss
from distbp.observe.trace import NULL_TRACER

DTYPES = {"float32": np.float32, "float64": np.float64}
INIT_CHUNK = 1 << 20  # elements of W drawn at once by the initialisation (8 MiB of float64)


class Workspace:
    """Per-layer buffers for batches of up to `rows` rows (reused from step to step).

    dropped: the hidden layers l whose outputs dropout masks in training; each gets ad[l], its masked
    activations a[l]·mask/(1−p) that the layer above reads (a[l] stays unmasked for σ')."""

    def __init__(self, rows: int, sizes: Sequence[int], dtype, dropped: frozenset = frozenset()):
        outs = sizes[1:]
        self.rows, self.dropped = rows, frozenset(dropped)
        self.ad = {l: np.empty((rows, sizes[l + 1]), dtype) for l in sorted(self.dropped)}
        self.z = [np.empty((rows, m), dtype) for m in outs]  # a·W (the output layer's: + b)
        # δ = ∂l/∂z of each layer: the backward pass writes it over z (no pass reads z after that), so the
        # same buffers, named for what they hold then
        self.delta = self.z
        self.a = [np.empty((rows, m), dtype) for m in outs]  # activations σ(z); softmax/linear at the output
        self.g = np.empty((rows, _g_width(sizes, self.dropped)), dtype)  # δ_next·Wᵀ by BLAS, every wide layer
        self.row_loss = np.empty(rows, dtype)
        self.partial = np.empty((_chunks(rows), max(outs)), dtype)  # per-chunk column sums for db
        # Wᵀ (fan_out, fan_in) of each narrow layer but the first, contiguous, for kernels.narrow_backward
        self.w_t = {l: np.empty((fo, fi), dtype) for l, (fi, fo) in narrow_layers(sizes)}


def narrow_layers(sizes: Sequence[int]) -> list[tuple[int, tuple[int, int]]]:
    """(l, (fan_in, fan_out)) of the layers l ≥ 1 at most kernels.NARROW_WIDTH wide, whose δ·Wᵀ goes through
    kernels.narrow_backward."""
    return [(l, (fi, fo)) for l, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:]))
            if l >= 1 and fo <= kernels.NARROW_WIDTH]


def _g_width(sizes: Sequence[int], dropped: frozenset = frozenset()) -> int:
    """Columns of Workspace.g: the widest fan-in of the layers l ≥ 1 whose δ·Wᵀ is a BLAS product (0: none;
    a classifier with one hidden layer sends its only δ·Wᵀ through kernels.narrow_backward). A layer above a
    dropped one (l − 1 in `dropped`) always takes the BLAS product, so that the mask can go between it and σ'."""
    narrow = {l for l, _ in narrow_layers(sizes)} - {l + 1 for l in dropped}
    return max((fi for l, fi in enumerate(sizes[:-1]) if l >= 1 and l not in narrow), default=0)


def workspace_bytes(rows: int, sizes: Sequence[int], dtype, dropped: frozenset = frozenset()) -> int:
    """Bytes of the forward/backward buffers for batches of up to `rows` rows (what Workspace allocates)."""
    outs = sizes[1:]
    elements = rows * (2 * sum(outs) + _g_width(sizes, dropped) + 1 + sum(sizes[l + 1] for l in dropped))
    elements += _chunks(rows) * max(outs)
    elements += sum(fi * fo for _, (fi, fo) in narrow_layers(sizes))
    return elements * np.dtype(dtype).itemsize


def layer_slices_of(sizes: Sequence[int]) -> list[slice]:
    """Layer l's (W, b) within the flat parameter/gradient buffers: W (fan_in·fan_out) then b (fan_out)."""
    slices, start = [], 0
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        slices.append(slice(start, start + fi * fo + fo))
        start += fi * fo + fo
    return slices


def _chunks(rows: int) -> int:
    return -(-rows // kernels.ROW_CHUNK)


class MLP:
    """A multilayer perceptron trained with the summed loss L = Σₙ lⁿ.

    sizes: [inputs, hidden…, outputs], at least two entries, all positive.
    activation: one name for every hidden layer or one per hidden layer
        (sigmoid, tanh, relu, linear).
    loss: cross_entropy (class labels), binary_cross_entropy (0/1 per output: multilabel, or binary with
        one output) or mse (float targets). output_activation: the output layer's σ; None takes the loss's
        own (softmax, sigmoid, linear); mse also takes sigmoid, tanh, relu or softmax (distbp.nn.losses).
    dtype: "float32" (default) or "float64". seed: weight initialisation
        (Glorot uniform for sigmoid/tanh/linear, He normal for relu; biases 0). init=False skips the draw
        (parameters 0), for parameters set right after.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "sigmoid",
        loss: str = "cross_entropy",
        dtype: str = "float32",
        seed: int = 0,
        init: bool = True,
        output_activation: str | None = None,
    ):
        self.sizes = _check_sizes(sizes)
        n_hidden = len(self.sizes) - 2
        names = [activation] * n_hidden if isinstance(activation, str) else list(activation)
        if len(names) != n_hidden:
            raise ValueError(f"{len(names)} activations given for {n_hidden} hidden layers")
        self.activation_names = names
        self.activations = [get_activation(a) for a in names]
        # kernels specialised on each layer's activation (the output layer only adds its bias)
        self._forward_kernels = [kernels.bias_activation_forward_for(a) for a in names + ["linear"]]
        self._backward_kernels = [kernels.activation_backward_for(a) for a in names]
        self._narrow_kernels = [kernels.narrow_backward_for(a) for a in names]
        # a pass of n rows multiplies n·fan_in·fan_out at most per product: below grain.PRODUCT_GRAIN, all of them run
        # on one BLAS thread (set once for the pass instead of around each product)
        self._widest_layer = max(fi * fo for fi, fo in zip(self.sizes[:-1], self.sizes[1:]))
        self.loss = get_loss(loss, output_activation)
        self.output_activation = self.loss.output_activation
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(DTYPES[str(dtype)])

        self.layer_slices = layer_slices_of(self.sizes)  # layer l's (W, b) within the flat buffers
        self.n_params = self.layer_slices[-1].stop
        self.flat_params = np.zeros(self.n_params, self.dtype)
        self.params = self.views(self.flat_params)
        if init:  # init=False: parameters left 0, for a caller that sets them at once (a file's, a fit's)
            self._init_params(seed)
        self._ws: Workspace | None = None
        # what training learnt about its data, applied by predict and kept in model files: the feature
        # scaling x ← (x − offset)·factor (None: the rows are used as given), and the class labels that
        # outputs 0…K−1 stand for (None: the outputs are the labels 0…K−1 themselves)
        self.feature_offset: np.ndarray | None = None  # (inputs,) float64
        self.feature_factor: np.ndarray | None = None  # (inputs,) float64
        self.classes: np.ndarray | None = None  # (outputs,) labels in output order
        # regression targets scaled in training as y ← (y − offset)·factor (None: used as given); predict
        # returns outputs in the targets' own units
        self.target_offset: np.ndarray | None = None  # (outputs,) float64
        self.target_factor: np.ndarray | None = None  # (outputs,) float64
        # dropout in training (distbp.train.setup sets it from the run's options): the drop probability of each
        # hidden layer's units (None: none), the run's seed, and the global step of the passes to come
        self.dropout: list[float] | None = None
        self.dropout_seed, self.dropout_step = 0, 0
        self.dropout_row_offset = 0  # added to a pass's row indices (each rank's own rows: its first row's index)
        self.trace = NULL_TRACER  # --trace: forward/backward per layer of the main thread's passes

    def architecture(self) -> str:
        """'64-30-10 sigmoid → sigmoid, mse': the layer sizes, the hidden layers' σ, the output's σ and the loss."""
        hidden = "/".join(dict.fromkeys(self.activation_names))
        return (f"{'-'.join(map(str, self.sizes))} {hidden + ' → ' if hidden else ''}{self.loss.output_activation}, "
                f"{self.loss.name}")

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def views(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per-layer (W (fan_in, fan_out), b (fan_out,)) views into a flat buffer of n_params."""
        if flat.shape != (self.n_params,):
            raise ValueError(f"flat buffer has shape {flat.shape}, the model needs ({self.n_params},)")
        out = []
        for (fi, fo), sl in zip(zip(self.sizes[:-1], self.sizes[1:]), self.layer_slices):
            layer = flat[sl]
            out.append((layer[: fi * fo].reshape(fi, fo), layer[fi * fo :]))
        return out

    def _init_params(self, seed: int) -> None:
        # drawn in float64 then cast, so float32 and float64 models start from the same point; a few rows of W
        # at a time (the generator draws in order, so the values are those of one whole draw), so that the
        # float64 temporary stays small beside a large float32 W
        rng = np.random.default_rng(seed)
        inits = [a.init for a in self.activations] + ["xavier"]
        for (W, b), init, (fi, fo) in zip(self.params, inits, zip(self.sizes[:-1], self.sizes[1:])):
            step = max(1, INIT_CHUNK // fo)
            for r0 in range(0, fi, step):
                rows = (min(fi, r0 + step) - r0, fo)
                if init == "he":
                    W[r0:r0 + step] = rng.standard_normal(rows) * np.sqrt(2.0 / fi)
                else:
                    limit = np.sqrt(6.0 / (fi + fo))
                    W[r0:r0 + step] = rng.uniform(-limit, limit, rows)
            b[...] = 0

    def memory_bytes(self, rows: int) -> dict[str, int]:
        """Bytes a training step holds for batches of `rows` rows (optimizer state not included).

        parameters and gradients: the two flat buffers; workspace: the forward/backward
        buffers (z and a of every layer, one δ·Wᵀ scratch, the per-row loss);
        workspace_minimum: what backpropagation cannot do without, the activations of
        every hidden layer plus the output logits (δ could overwrite both in place).
        The workspace keeps z beside a because σ'(z, a) may need z, and δ·Wᵀ needs a
        scratch because a is still read while δ is formed.
        """
        item = self.dtype.itemsize
        return {"parameters": self.n_params * item, "gradients": self.n_params * item,
                "workspace": workspace_bytes(rows, self.sizes, self.dtype),
                "workspace_minimum": rows * sum(self.sizes[1:]) * item}

    # ---- validation -------------------------------------------------------

    def check_batch(self, X: np.ndarray, y: np.ndarray | None = None, allow_empty: bool = False) -> None:
        """Raise ValueError naming the problem with a batch X (n, inputs) and targets y."""
        if not isinstance(X, np.ndarray) or X.ndim != 2:
            raise ValueError(f"X must be a 2-D array (rows, {self.sizes[0]} features), got "
                             f"{getattr(X, 'shape', type(X).__name__)}")
        if X.shape[1] != self.sizes[0]:
            raise ValueError(f"X has {X.shape[1]} features but the model's input layer has {self.sizes[0]}")
        if X.shape[0] == 0 and not allow_empty:
            raise ValueError("empty batch: X has no rows")
        if not np.issubdtype(X.dtype, np.floating):
            raise ValueError(f"X must be floating point, got dtype {X.dtype}")
        if X.size and not sized(kernels.all_finite, X.size)(X.reshape(-1) if X.flags.c_contiguous else X.ravel()):
            raise ValueError("X contains NaN or Inf")
        if y is not None:
            self.loss.check_targets(y, X.shape[0], self.sizes[-1])

    # ---- forward and backward ---------------------------------------------

    def _workspace(self, n: int) -> Workspace:
        if self._ws is None or self._ws.rows < n or self._ws.dropped != self.dropped_layers():
            self._ws = Workspace(n, self.sizes, self.dtype, self.dropped_layers())
        return self._ws

    def new_workspace(self, rows: int) -> Workspace:
        """Forward/backward buffers of this model's own for batches of up to `rows` rows (one per thread)."""
        return Workspace(rows, self.sizes, self.dtype, self.dropped_layers())

    def dropped_layers(self) -> frozenset:
        """The hidden layers whose units dropout drops in training (p > 0)."""
        return frozenset(l for l, p in enumerate(self.dropout or ()) if p > 0)

    def _dropout_args(self, l: int, rows: np.ndarray) -> tuple:
        """(rows, offset, key, threshold, scale) of hidden layer l's mask at this pass's step."""
        p = self.dropout[l]
        key = np.uint64(kernels.dropout_key(self.dropout_seed, self.dropout_step, l))
        return (rows, np.int64(self.dropout_row_offset), key, kernels.dropout_threshold(p),
                self.dtype.type(1.0 / (1.0 - p)))

    def reserve_workspace(self, rows: int) -> None:
        """Allocate the forward/backward buffers for batches of up to `rows` rows now (training does, so
        that its memory is known before the first step and never grows)."""
        self._workspace(max(1, rows))

    def _forward(self, X: np.ndarray, ws: Workspace, n: int, trace=NULL_TRACER, rows: np.ndarray | None = None) -> None:
        """Fill z[l], a[l] (n rows) for every hidden layer, and the output layer's z = a·W + b (its σ is the
        loss's: softmax or linear). rows: the global indices of X's rows in a training pass with dropout; the
        layer above a dropped layer then reads ad[l] = a[l]·mask/(1−p)."""
        a_in = X
        for l, (W, b) in enumerate(self.params):
            t0 = trace.now() if trace.on else 0.0
            z = ws.z[l][:n]
            a_out = ws.a[l][:n] if l < self.n_layers - 1 else z
            dense_forward(z, a_out, a_in, W, b, self._forward_kernels[l])
            a_in = a_out
            if rows is not None and l in ws.dropped:
                a_in = ws.ad[l][:n]
                sized(kernels.dropout_forward, a_out.size)(a_in, a_out, *self._dropout_args(l, rows))
            if trace.on:
                trace.complete(f"forward {l}", t0, trace.now() - t0, layer=l)

    def loss_and_grad_into(self, X: np.ndarray, y: np.ndarray, grad: np.ndarray,
                           hooks: BackwardHooks | None = None, progress_chunks: int = 1,
                           validate: bool = True, workspace: Workspace | None = None,
                           w: np.ndarray | None = None, rows: np.ndarray | None = None) -> float:
        """The hot path: write ∂L/∂θ for the batch into `grad` (flat, n_params) and return L = Σₙ lⁿ
        (L = Σₙ wₙ lⁿ with per-row weights w (n,) in the model's dtype).

        X (n, inputs) in the model's dtype; y (n,) int labels or (n, outputs) targets.
        An empty batch (a rank's empty shard) gives L = 0 and zero gradients.
        `hooks.layer_ready(l)` is called as soon as layer l's gradients are final
        (output layer first), and `hooks.progress()` between `progress_chunks`
        row-chunks of each δ·Wᵀ product, so communication can overlap the backward pass.
        Buffers are reused: no allocation once the largest batch has been seen. `workspace`
        (from new_workspace) lets several threads run passes of one model at once.
        rows (n,) int64: the rows' global indices, which turn dropout on (`dropout`): each unit's mask is a
        function of (dropout_seed, dropout_step, the row, the layer, the unit), the same on any layout.
        When every product of the pass is below grain.PRODUCT_GRAIN, numpy's BLAS runs it on one thread.
        """
        restore = lower_blas(X.shape[0] * self._widest_layer)
        try:
            return self._loss_and_grad_into(X, y, grad, hooks, progress_chunks, validate, workspace, w, rows)
        finally:
            restore_blas(restore)

    def _loss_and_grad_into(self, X: np.ndarray, y: np.ndarray, grad: np.ndarray,
                            hooks: BackwardHooks | None = None, progress_chunks: int = 1,
                            validate: bool = True, workspace: Workspace | None = None,
                            w: np.ndarray | None = None, rows: np.ndarray | None = None) -> float:
        """loss_and_grad_into's pass (numpy's BLAS threads already chosen)."""
        if validate:
            self.check_batch(X, y, allow_empty=True)
        if X.dtype != self.dtype:
            raise ValueError(f"X has dtype {X.dtype} but the model computes in {self.dtype}; convert it first")
        n = X.shape[0]
        grads = self.views(grad)
        if n == 0:
            grad[...] = 0
            for l in reversed(range(self.n_layers)):
                if hooks is not None:
                    hooks.layer_ready(l)
            return 0.0
        ws = self._workspace(n) if workspace is None else workspace
        tr = self.trace if workspace is None else NULL_TRACER  # other threads' passes are not traced
        drop = rows is not None and bool(ws.dropped)
        with tr.span("forward", rows=n):
            self._forward(X, ws, n, tr, rows if drop else None)

        # output layer: δ = ∂l/∂z from the loss, written over z
        L = self.n_layers - 1
        delta = ws.delta[L][:n]
        row_loss = ws.row_loss[:n]
        sized(self.loss.loss_delta, delta.size)(ws.z[L][:n], y, ws.a[L][:n], delta, row_loss)
        if w is not None:  # ∂(wₙ lⁿ)/∂z = wₙ·∂lⁿ/∂z: the weights enter once, at the output
            kernels.weight_rows(delta, row_loss, w)
        loss = kernels.ordered_sum(row_loss)

        for l in range(L, -1, -1):
            t0 = tr.now() if tr.on else 0.0
            dW, db = grads[l]
            a_in = X if l == 0 else ws.a[l - 1][:n]
            dropped = drop and l > 0 and (l - 1) in ws.dropped  # this layer read ad[l − 1], a_in masked
            if l == L:  # a hidden layer's db came with its δ, from dense_backward
                bias_gradient(db, delta, ws.partial)
            weight_gradient(dW, ws.ad[l - 1][:n] if dropped else a_in, delta)
            if hooks is not None:
                hooks.layer_ready(l)
            if l > 0:
                # the layer below's δ_in = σ'(a_in) ⊙ (δ·Wᵀ), written over its z, and its db_in = Σₙ δ_in
                W, delta_in, db_in = self.params[l][0], ws.delta[l - 1][:n], grads[l - 1][1]
                if l in ws.w_t and not dropped:  # a narrow layer: product, σ' and db_in in one pass
                    narrow_dense_backward(delta_in, db_in, delta, W, a_in, self._narrow_kernels[l - 1], ws.w_t[l],
                                          ws.partial, hooks)
                else:
                    dense_backward(delta_in, db_in, delta, W, a_in, self._backward_kernels[l - 1],
                                   ws.g[:n, : W.shape[0]], ws.partial, hooks, progress_chunks,
                                   self._dropout_args(l - 1, rows) if dropped else None)
                delta = delta_in
            if tr.on:
                tr.complete(f"backward {l}", t0, tr.now() - t0, layer=l)
        return loss

    def loss_and_grad(self, X: np.ndarray, y: np.ndarray) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
        """L = Σₙ lⁿ over the rows of X and ∂L/∂θ as [(dW, db), …] (new arrays owned by the caller)."""
        self.check_batch(X, y)
        grad = np.empty(self.n_params, self.dtype)
        loss = self.loss_and_grad_into(np.ascontiguousarray(X, self.dtype), y, grad, validate=False)
        return loss, self.views(grad)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Output-layer activations (n, outputs): softmax probabilities, σ's per-output probabilities, or
        the outputs of a regression, in the targets' own units when training scaled them.

        X (n, inputs) is raw data: the feature scaling training used (if any) is applied first.
        """
        kernels.refuse_after_fork("MLP.predict")
        self.check_batch(X)
        X = self.scale_features(X)
        n = X.shape[0]
        ws = self._workspace(n)
        self._forward(X, ws, n)
        out = np.empty((n, self.sizes[-1]), self.dtype)
        sized(self.loss.output, out.size)(ws.z[-1][:n], out)
        return self.unscale_targets(out)

    def unscale_targets(self, out: np.ndarray) -> np.ndarray:
        """Outputs (n, outputs) in the targets' own units: out/factor + offset when training scaled the targets
        (in place, in out's dtype), else out itself."""
        if self.target_offset is None:
            return out
        out /= self.target_factor.astype(out.dtype)
        out += self.target_offset.astype(out.dtype)
        return out

    def save(self, path: str) -> None:
        """Write this model (layers, activations, loss, dtype, parameters, feature scaling, classes) to the
        model file `path`, an .npz read back by `distbp.load(path)`; see distbp.nn.modelfile for the format."""
        modelfile.save_model(self, path)

    def scale_features(self, X: np.ndarray) -> np.ndarray:
        """X (n, inputs) in the model's dtype with the training's feature scaling applied (a new array when
        anything changes; X itself when it is already contiguous, of this dtype and unscaled)."""
        if self.feature_offset is None:
            return np.ascontiguousarray(X, self.dtype)
        # the same operations in the same dtype as the training rows' (distbp.data.Split.gather), so that
        # a model predicts on raw rows exactly what it computed on them in training
        out = np.array(X, self.dtype, order="C")
        out -= self.feature_offset.astype(self.dtype)
        out *= self.feature_factor.astype(self.dtype)
        return out

    def count_correct(self, y: np.ndarray, workspace: Workspace | None = None, w: np.ndarray | None = None) -> float:
        """Correct predictions of the last forward pass over y's rows: labels (n,), or one-hot targets (n, outputs)
        compared by argmax; with weights w (n,), the sum of the correct rows' weights. workspace: the one that
        pass used, if not the model's own. Multilabel (binary_cross_entropy): each row counts the share of its
        outputs whose p > ½ matches y > ½, so correct / rows is the Hamming (per-label) accuracy."""
        if y.shape[0] == 0:
            return 0.0
        out = (self._ws if workspace is None else workspace).a[-1][:y.shape[0]]
        if self.loss.multilabel:
            return float(kernels.multilabel_correct(out, y, w)[0])
        if w is not None:
            return float(kernels.weighted_correct(out, y, w) if y.ndim == 1
                         else kernels.weighted_correct_onehot(out, y, w))
        return float(kernels.count_correct(out, y) if y.ndim == 1 else kernels.count_correct_onehot(out, y))

    def outputs(self, n: int, workspace: Workspace | None = None) -> np.ndarray:
        """The output activations (n, outputs) of the last forward pass of n rows (a view into the workspace,
        `workspace` if given, else the model's own; valid until the next pass)."""
        return (self._ws if workspace is None else workspace).a[-1][:n]

    def loss_into(self, X: np.ndarray, y: np.ndarray, workspace: Workspace | None = None,
                  w: np.ndarray | None = None) -> float:
        """L = Σₙ lⁿ (Σₙ wₙ lⁿ with weights w) over the rows of X without gradients (evaluation); count_correct
        reads its outputs (from `workspace`, if given, instead of the model's own)."""
        n = X.shape[0]
        if n == 0:
            return 0.0
        ws = self._workspace(n) if workspace is None else workspace
        self._forward(X, ws, n)
        z = ws.z[-1][:n]
        sized(self.loss.loss_delta, z.size)(z, y, ws.a[-1][:n], z, ws.row_loss[:n])
        if w is not None:
            kernels.weight_rows(z, ws.row_loss[:n], w)
        return kernels.ordered_sum(ws.row_loss[:n])


def _check_sizes(sizes) -> list[int]:
    try:
        sizes = [int(s) for s in sizes]
    except (TypeError, ValueError):
        raise ValueError(f"layer sizes must be integers, got {sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"need at least an input and an output layer, got layer list {sizes}")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"layer sizes must be positive, got {sizes}")
    return sizes


def load_model(path) -> MLP:
    """The MLP saved in the model file `path` (`distbp.load`): layers, activations, loss, dtype, parameters
    (the same bits), feature scaling and classes. Raises ModelFileError naming the file and the cause."""
    return modelfile.read_model(path, MLP)
