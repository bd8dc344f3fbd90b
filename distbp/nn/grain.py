"""Grain sizes: below a measured amount of work, a kernel or a matrix product runs on the calling thread alone.

A parallel Numba kernel wakes the pool and joins it on every call, and OpenBLAS splits a product over its threads
from a size on. Below some work that costs more than the second thread computes (issue 31: the 64-128-10 step at
batch 128 ran 1.76x slower on 2 threads than on 1), so, as PyTorch's parallel loops take a grain size:
- every parallel kernel of distbp.nn.kernels and distbp.nn.losses is compiled twice (`parallel_kernel`): `kernel`
  itself (prange over Numba's pool) and `kernel.serial`, the same loops on the calling thread, and carries its grain
  (`kernel.grain`, elements). `sized(kernel, elements)` picks the serial twin below it. The two give the same bits:
  every sum in these kernels runs over chunks fixed by the data, not by the threads, and the element-wise work is
  the same operations in the same order (tests/unit/test_grain.py compares them);
- `matmul(a, b, out)` runs a product of fewer than PRODUCT_GRAIN multiply-adds on one BLAS thread (numpy's
  OpenBLAS is set to 1 around it: two ctypes calls of about 0.3 µs), larger ones on every thread the BLAS has.
  On a CPU where OpenBLAS's float32 products give other bits on 1 thread than on 2 (seen on AMD Zen 3), a run that
  asked for 2 threads now gets the 1-thread bits for its small products: results depend less on the thread count.

The grains come from benchmarks/grain.py on the 2-core AMD EPYC Zen 4 of these sessions (2 threads against the
serial twin, float32; table in docs/performance.md): relu's σ and every σ' ran faster on 2 threads from 65,536
elements, the column sums from 131,072, dropout and Σx² from 16,384, an exp or tanh per element from about 4,096;
products on 2 BLAS threads from about 1 M multiply-adds (0.79-0.88 of 1 thread at 128x64x128, 1.0 below).
On 1 thread the twin is the faster one at every size below its grain too: it skips the pool's launch (1-2.5 µs a
call measured at 2,048-32,768 elements). The optimizers' 1-D updates have no twin: compiled serially their loops
did not vectorise, and the parallel kernel on one thread measured 1.7-6x faster than such a twin.
"""
from __future__ import annotations

import types
from typing import Callable

import numpy as np
from numba import njit

from distbp.host.threads import numpy_blas

# grains in elements of a kernel's work (narrow_backward: elements × k), by what an element costs; the crossovers
# benchmarks/grain.py measured (2 threads against the serial twin) are in docs/performance.md
LIGHT_GRAIN = 1 << 16  # a few operations an element: relu's and linear's σ, every σ', the finite check
SUM_GRAIN = 1 << 17  # the column sums (db) and narrow_backward's δ·Wᵀ
MEDIUM_GRAIN = 1 << 14  # a dozen operations an element: dropout's hash, Σx² in float64, the mse loss
HEAVY_GRAIN = 1 << 12  # an exp, tanh or log an element: sigmoid's and tanh's σ, softmax, cross-entropy
PRODUCT_GRAIN = 1 << 20  # multiply-adds (rows · inner · columns): a product of fewer runs on one BLAS thread


def parallel_kernel(grain: int, **options) -> Callable:
    """Decorator: `njit(parallel=True, cache=True, **options)`, with the serial twin as `.serial` and the work from
    which the parallel kernel runs as `.grain` (see `sized`).

    The twin is compiled from a copy of the function named `<name>_serial`: Numba's on-disk cache keys a function
    by its name and code, not by its options, so a twin of the same name would load the parallel machine code."""
    def compile_both(py_func):
        kernel = njit(parallel=True, cache=True, **options)(py_func)
        kernel.serial = njit(cache=True, **options)(_renamed(py_func, "serial"))
        kernel.grain = grain
        _TWINNED.append(kernel)
        return kernel
    return compile_both


_TWINNED: list = []  # every kernel parallel_kernel made in this process (what compile_twins walks)


def compile_twins() -> int:
    """Compile (or load from Numba's cache) the other twin of every kernel called so far, for the argument types it
    was called with; returns how many. The warm-up's tiny arrays run the serial twins: after this the parallel
    kernels of a step are ready as well (distbp.train.warmup)."""
    done = 0
    for kernel in _TWINNED:
        for sig in set(kernel.serial.signatures) - set(kernel.signatures):
            kernel.compile(sig)
            done += 1
        for sig in set(kernel.signatures) - set(kernel.serial.signatures):
            kernel.serial.compile(sig)
            done += 1
    return done


def sized(kernel, work: int) -> Callable:
    """`kernel.serial` for less work than `kernel.grain` (elements), else the parallel `kernel`."""
    return kernel.serial if work < kernel.grain else kernel


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (n, m) = a (n, k) · b (k, m), by numpy's BLAS; on one BLAS thread below PRODUCT_GRAIN multiply-adds."""
    if a.shape[0] * a.shape[1] * b.shape[1] >= PRODUCT_GRAIN:
        np.matmul(a, b, out=out)
        return
    blas = numpy_blas()
    n = blas.get() if blas is not None else 1
    if n == 1:
        np.matmul(a, b, out=out)
        return
    blas.set(1)
    try:
        np.matmul(a, b, out=out)
    finally:
        blas.set(n)


def _renamed(py_func, suffix: str):
    """A copy of py_func (same code, globals, defaults and closure) named `<name>_<suffix>`."""
    copy = types.FunctionType(py_func.__code__, py_func.__globals__, f"{py_func.__name__}_{suffix}",
                              py_func.__defaults__, py_func.__closure__)
    copy.__qualname__ = f"{py_func.__qualname__}_{suffix}"
    copy.__doc__, copy.__module__ = py_func.__doc__, py_func.__module__
    return copy
