"""Element-wise layer kernels, fused and parallel; matrix products stay in BLAS.

Layout (all of distbp): batch-major. A layer maps a (n, fan_in) to
z = a·W + b of shape (n, fan_out), with W (fan_in, fan_out) and b (fan_out,).

Forward:   z = a·W (BLAS), then `bias_activation_forward`: a' = σ(z + b) (z + b is not stored:
           σ' is a function of a', see distbp.nn.activations; at the output a' is z itself).
Backward:  g = δ_next·Wᵀ (BLAS), then `activation_backward`: δ = σ'(a) ⊙ g and
           db = Σₙ δ in the same pass; dW = aᵀ·δ (BLAS). Below a narrow next layer (the output
           layer of a classifier) `narrow_backward` does δ_next·Wᵀ, σ' and db in one pass, no BLAS.
           distbp.nn.layers calls these as one forward and one backward function per dense layer.
Sums are deterministic: each parallel task sums a fixed chunk (ROW_CHUNK rows, or SUM_CHUNK elements)
into its own row of partial sums, and `add_rows_into` adds those rows in chunk order, so no result
depends on the thread count (distbp.nn.optim's layer norms use the same two). So each parallel kernel also has a
serial twin of the same loops and bits (`kernel.serial`), which its callers run below the kernel's grain
(distbp.nn.grain.sized).
Every kernel releases the GIL (nogil), so that threads of one rank can run passes of the model at
once (--reproducible computes one micro-block per thread). The activation is a compile-time constant: `bias_activation_forward_for(name)`
and `activation_backward_for(name)` return kernels specialised on it (see
`distbp.nn.activations.kernel_key`), so σ is inlined and the loops vectorise.
"""

# numba's workers (and OpenBLAS's) spin only briefly before they sleep: distbp/__init__.py sets that up
# before anything loads numpy (distbp.host.threads.set_pool_waits)
import os
import sys

import numpy as np
from numba import njit, prange

from distbp.errors import DistbpError
from distbp.nn.activations import derivative, grain_of, kernel_key, value
from distbp.nn.grain import HEAVY_GRAIN, LIGHT_GRAIN, MEDIUM_GRAIN, SUM_GRAIN, VECTOR_HEAVY_GRAIN, parallel_kernel

# rows per parallel task in kernels that also sum over rows. each task streams whole
# rows and keeps its own partial sums, added in chunk order afterwards: the chunks do
# not depend on the thread count, so neither does the result. (tasks owning blocks of
# 64 columns instead measured 5-6x slower on 512x1024 float32: strided, barely vectorised.)
ROW_CHUNK = 16

# elements per parallel task of a 1-D sum (sum_of_squares, the optimizers' layer norms), fixed for the same reason
SUM_CHUNK = 4096
SUM_LANES = 64  # interleaved float64 partial sums of lane_sum_of_squares (the width LLVM vectorised: see there)


def bias_activation_forward_for(activation: str):
    """The compiled kernel `bias_activation_forward(z, a, b)` for one activation (by name)."""
    key = kernel_key(activation)
    if key not in _FORWARD:
        _FORWARD[key] = _make_bias_activation_forward(key)
    return _FORWARD[key]


def activation_backward_for(activation: str):
    """The compiled kernel `activation_backward(delta, g, a, db, partial)` for one activation (by name)."""
    key = kernel_key(activation)
    if key not in _BACKWARD:
        _BACKWARD[key] = _make_activation_backward(key)
    return _BACKWARD[key]


def narrow_backward_for(activation: str):
    """The compiled kernel `narrow_backward(delta, d_next, w_t, a, db, partial)` for one activation (by name)."""
    key = kernel_key(activation)
    if key not in _NARROW:
        _NARROW[key] = _make_narrow_backward(key)
    return _NARROW[key]


_FORWARD: dict = {}
_BACKWARD: dict = {}
_NARROW: dict = {}

# a next layer at most this wide (the output layer of a classifier) goes through narrow_backward instead of
# a BLAS δ·Wᵀ: for 512x10 · 10x1024, OpenBLAS ran at 23 GFLOP/s on 1 thread and 14 on 2 (against 86 for
# the square products), and the product's 2 MB result was written and read back by activation_backward
NARROW_WIDTH = 16


# the factories close over `key`, a string constant: numba inlines the activation
# through it and caches one entry per key on disk (the cache hashes the closure's
# values, and a string hashes the same in every process)

def _make_bias_activation_forward(key: str):
    @parallel_kernel(grain_of(key, LIGHT_GRAIN, HEAVY_GRAIN),
                     float32_grain=grain_of(key, LIGHT_GRAIN, VECTOR_HEAVY_GRAIN), nogil=True)
    def bias_activation_forward(z, a, b):
        """a (n, m) = σ(z + b) for z (n, m) and b (m,). `a` may be `z` itself (in place, as the output
        layer does); otherwise z is left as it is."""
        n, m = z.shape
        for i in prange(n):
            for j in range(m):
                a[i, j] = value(key, z[i, j] + b[j])
    return bias_activation_forward


def _make_activation_backward(key: str):
    @parallel_kernel(LIGHT_GRAIN, nogil=True)
    def activation_backward(delta, g, a, db, partial):
        """δ (n, m) = σ'(z) ⊙ g with σ'(z) from a = σ(z), and db (m,) = Σₙ δ.

        g = δ_next·Wᵀ (n, m); a the layer's activation (n, m). `delta` may be `g` or `a` (each
        element is read before it is written). db sums fixed chunks
        of ROW_CHUNK rows, so it is the same for any thread count; partial is scratch
        of at least (⌈n/ROW_CHUNK⌉, m) for the chunk sums.
        """
        n, m = g.shape
        n_chunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
        for c in prange(n_chunks):
            p = partial[c]
            p[:] = 0
            for i in range(c * ROW_CHUNK, min(n, (c + 1) * ROW_CHUNK)):
                for j in range(m):
                    d = g[i, j] * derivative(key, a[i, j])
                    delta[i, j] = d
                    p[j] += d
        db[:] = 0
        add_rows_into(db, partial[:n_chunks, :m])
    return activation_backward


def _make_narrow_backward(key: str):
    @parallel_kernel(MEDIUM_GRAIN, nogil=True)
    def narrow_backward(delta, d_next, w_t, a, db, partial):
        """δ (n, m) = σ'(a) ⊙ (d_next·Wᵀ) in one pass, δ[i] = σ'(a[i]) ⊙ Σ_k d_next[i, k]·w_t[k], and
        db (m,) = Σₙ δ.

        d_next (n, k): δ of the next layer, k ≤ NARROW_WIDTH; w_t (k, m): that layer's Wᵀ, contiguous; a (n, m)
        this layer's activation. Each row is built in δ's own row (it stays in L1) by passes of four terms,
        summed over k in order, so a row's bits depend on nothing but the row: not on the thread count or on how the rows
        are split over ranks or blocks. partial: scratch of at least (⌈n/ROW_CHUNK⌉, m), as in
        activation_backward.
        """
        n, m = delta.shape
        k = d_next.shape[1]
        n_chunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
        for c in prange(n_chunks):
            p = partial[c]
            p[:] = 0
            for i in range(c * ROW_CHUNK, min(n, (c + 1) * ROW_CHUNK)):
                row = delta[i]
                s = d_next[i, 0]
                for j in range(m):
                    row[j] = s * w_t[0, j]
                kk = 1
                while kk + 4 <= k:  # four terms per pass over the row, added in the same order (same bits)
                    s0, s1, s2, s3 = d_next[i, kk], d_next[i, kk + 1], d_next[i, kk + 2], d_next[i, kk + 3]
                    w0, w1, w2, w3 = w_t[kk], w_t[kk + 1], w_t[kk + 2], w_t[kk + 3]
                    for j in range(m):
                        row[j] = (((row[j] + s0 * w0[j]) + s1 * w1[j]) + s2 * w2[j]) + s3 * w3[j]
                    kk += 4
                while kk < k:
                    s, w0 = d_next[i, kk], w_t[kk]
                    for j in range(m):
                        row[j] += s * w0[j]
                    kk += 1
                for j in range(m):
                    d = row[j] * derivative(key, a[i, j])
                    row[j] = d
                    p[j] += d
        db[:] = 0
        add_rows_into(db, partial[:n_chunks, :m])
    return narrow_backward


@parallel_kernel(SUM_GRAIN, nogil=True)
def column_sum(delta, db, partial):
    """db (m,) = Σₙ delta (n, m), by fixed chunks of ROW_CHUNK rows (the same for any thread count).

    partial: scratch of at least (⌈n/ROW_CHUNK⌉, m).
    """
    n, m = delta.shape
    n_chunks = (n + ROW_CHUNK - 1) // ROW_CHUNK
    for c in prange(n_chunks):
        p = partial[c]
        p[:] = 0
        for i in range(c * ROW_CHUNK, min(n, (c + 1) * ROW_CHUNK)):
            for j in range(m):
                p[j] += delta[i, j]
    db[:] = 0
    add_rows_into(db, partial[:n_chunks, :m])


@njit(cache=True, nogil=True)
def add_rows_into(out, partial):
    """out (m,) += Σ_c partial[c] for partial (c, m), rows added in order: the last, serial step of every
    chunked sum, so the result does not depend on which thread summed which chunk."""
    for c in range(partial.shape[0]):
        for j in range(partial.shape[1]):
            out[j] += partial[c, j]


@njit(cache=True, nogil=True)
def ordered_sum(x):
    """Σ x in index order (deterministic, whatever the thread count); float64 accumulator."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s


@njit(inline="always", cache=True, nogil=True)
def lane_sum_of_squares(x):
    """Σ x² of a contiguous 1-D x in float64: element i goes to partial sum i mod SUM_LANES, the lanes are added
    in lane order at the end. A fixed order (the same bits on any CPU and thread count) that the vectorizer can
    keep in registers, where one running sum is a chain of dependent adds (2.9x slower on 4096 float32 than 8
    lanes). 64 lanes: LLVM vectorises the 64-wide inner loop, and unrolled 8-, 16- and 32-wide ones element by
    element (0.14 against 0.44-0.54 ns an element in float32 on the Zen 4, 0.13 against 0.28 in float64)."""
    acc = np.zeros(SUM_LANES)
    n = x.shape[0]
    full = n // SUM_LANES * SUM_LANES
    for i0 in range(0, full, SUM_LANES):
        for j in range(SUM_LANES):
            d = np.float64(x[i0 + j])
            acc[j] += d * d
    for i in range(full, n):
        d = np.float64(x[i])
        acc[i - full] += d * d
    s = 0.0
    for j in range(SUM_LANES):
        s += acc[j]
    return s


@parallel_kernel(HEAVY_GRAIN, nogil=True)
def sum_of_squares(x):
    """Σ x² of the 1-D array x in float64, by fixed chunks of SUM_CHUNK elements added in chunk order:
    the same for any thread count (so every rank holding the same x gets the same bits)."""
    n = x.shape[0]
    n_chunks = (n + SUM_CHUNK - 1) // SUM_CHUNK
    partial = np.zeros((n_chunks, 1))
    for c in prange(n_chunks):
        s = 0.0
        for i in range(c * SUM_CHUNK, min(n, (c + 1) * SUM_CHUNK)):
            v = np.float64(x[i])
            s += v * v
        partial[c, 0] = s
    total = np.zeros(1)
    add_rows_into(total, partial)
    return total[0]


@parallel_kernel(SUM_GRAIN, nogil=True)
def all_finite(x):
    """True when the 1-D array x holds no NaN or Inf."""
    bad = 0
    for i in prange(x.shape[0]):
        if not np.isfinite(x[i]):
            bad += 1
    return bad == 0


@njit(cache=True, nogil=True)
def _argmax_row(x, i):
    best = 0
    for j in range(1, x.shape[1]):
        if x[i, j] > x[i, best]:
            best = j
    return best


@njit(cache=True, nogil=True)
def count_correct(out, labels):
    """Rows whose largest output (first one on ties, like np.argmax) is the label; out (n, k), labels (n,)."""
    c = 0
    for i in range(out.shape[0]):
        if _argmax_row(out, i) == labels[i]:
            c += 1
    return c


@njit(cache=True, nogil=True)
def count_correct_onehot(out, targets):
    """count_correct for one-hot (or float) targets (n, k): argmax of the outputs equals argmax of the targets."""
    c = 0
    for i in range(out.shape[0]):
        if _argmax_row(out, i) == _argmax_row(targets, i):
            c += 1
    return c


@njit(cache=True, nogil=True)
def multilabel_correct(out, targets, w):
    """(Σ of each row's share of outputs with (p > ½) = (y > ½), rows with every output so) for σ outputs
    out (n, k) and 0/1 targets (n, k): the Hamming and the subset accuracy's numerators, as float64; with
    weights w (n,) (None: all 1), each row counts wₙ."""
    hamming, subset = 0.0, 0.0
    n, k = out.shape
    for i in range(n):
        same = 0
        for j in range(k):
            if (out[i, j] > 0.5) == (targets[i, j] > 0.5):
                same += 1
        wi = 1.0 if w is None else float(w[i])
        hamming += wi * same / k
        if same == k:
            subset += wi
    return hamming, subset


@njit(cache=True, nogil=True)
def weight_rows(delta, row_loss, w):
    """The weighted sum L = Σₙ wₙ lⁿ: δₙ ← wₙ·δₙ and lₙ ← wₙ·lₙ, in place. delta (n, k), row_loss (n,) and
    w (n,) in the model's dtype. Every layer below gets its δ from this one, so ∂L/∂θ is weighted too."""
    for i in range(delta.shape[0]):
        wi = w[i]
        for j in range(delta.shape[1]):
            delta[i, j] *= wi
        row_loss[i] *= wi


@njit(cache=True, nogil=True)
def weighted_correct(out, labels, w):
    """Σ wₙ over the rows whose largest output is the label (count_correct, weighted); as float64."""
    c = 0.0
    for i in range(out.shape[0]):
        if _argmax_row(out, i) == labels[i]:
            c += w[i]
    return c


@njit(cache=True, nogil=True)
def weighted_correct_onehot(out, targets, w):
    """weighted_correct for one-hot (or float) targets (n, k)."""
    c = 0.0
    for i in range(out.shape[0]):
        if _argmax_row(out, i) == _argmax_row(targets, i):
            c += w[i]
    return c


# ---- dropout: masks that are a pure function of (seed, step, row, layer, unit) ---------------------
# Each unit's keep-or-drop comes from a counter-based hash (SplitMix64's finaliser) of the run's seed, the
# global step, the row's global index, the layer and the unit: no generator state, nothing drawn per rank,
# so every layout, accumulation and resume sees the same masks. tests/unit/test_dropout.py holds a numpy twin.

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, nogil=True)
def _mix(x):
    """SplitMix64's finaliser: a bijection of uint64 whose outputs look independent for adjacent inputs."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


@njit(cache=True, nogil=True)
def dropout_key(seed, step, layer):
    """The key of one layer's masks at one global step (uint64)."""
    return _mix(_mix(_mix(np.uint64(seed) + _GOLDEN) ^ np.uint64(step)) ^ np.uint64(layer))


@njit(cache=True, nogil=True)
def _keep(key, row, unit, threshold):
    """Whether unit `unit` of row `row` is kept: 53 bits of the hash against threshold = p·2⁵³."""
    h = _mix(_mix(key ^ np.uint64(row)) + np.uint64(unit) * _GOLDEN)
    return (h >> np.uint64(11)) >= threshold


@parallel_kernel(MEDIUM_GRAIN, nogil=True)
def dropout_forward(out, a, rows, offset, key, threshold, scale):
    """Inverted dropout: out = a·mask/(1−p), with scale = 1/(1−p) in a's dtype and rows (n,) + offset the
    global indices of a's rows (int64)."""
    zero = a.dtype.type(0)
    for i in prange(a.shape[0]):
        r = rows[i] + offset
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] * scale if _keep(key, r, j, threshold) else zero


@parallel_kernel(MEDIUM_GRAIN, nogil=True)
def dropout_backward(g, rows, offset, key, threshold, scale):
    """The same mask on the gradient through the dropped units: g ← g·mask/(1−p), in place."""
    zero = g.dtype.type(0)
    for i in prange(g.shape[0]):
        r = rows[i] + offset
        for j in range(g.shape[1]):
            g[i, j] = g[i, j] * scale if _keep(key, r, j, threshold) else zero


def dropout_threshold(p: float) -> np.uint64:
    """p as the 53-bit threshold _keep compares with."""
    return np.uint64(round(p * 2.0 ** 53))


# ---- a process forked from one whose kernels ran --------------------------------------------------
# GNU OpenMP (Numba's "omp" threading layer here) cannot run in a child forked from a process that used it:
# Numba's first parallel launch there prints "Terminating: fork() called from a process already using GNU
# OpenMP" and kills the child, and a pool that waits for the child's result (joblib's multiprocessing
# backend) waits forever. A fork is a fact of the whole process, so it is kept at module level.
_FORKED_FROM_OPENMP = False


def _mark_fork_from_openmp() -> None:
    """In the child after fork(): note whether the parent had already started Numba's OpenMP layer."""
    global _FORKED_FROM_OPENMP
    numba = sys.modules.get("numba")
    try:
        _FORKED_FROM_OPENMP = numba is not None and numba.threading_layer() == "omp"
    except ValueError:  # no parallel kernel has run in the parent yet: the child may start the layer itself
        _FORKED_FROM_OPENMP = False


os.register_at_fork(after_in_child=_mark_fork_from_openmp)


def refuse_after_fork(what: str) -> None:
    """Raise one DistbpError, before any kernel runs, in a process forked after the parent ran distbp's kernels."""
    if _FORKED_FROM_OPENMP:
        raise DistbpError(f"{what} cannot run in a process forked (without exec) from one that already ran distbp's "
                          "parallel kernels: GNU OpenMP would kill it. Start workers by spawning them (joblib's "
                          "default loky backend, or multiprocessing.get_context('spawn')), or use n_jobs=1")
