"""Grain sizes: below a measured amount of work, a kernel or a matrix product runs on the calling thread alone.

A parallel Numba kernel wakes the pool and joins it on every call, and OpenBLAS splits a product over its threads
from a size on. Below some work that costs more than the second thread computes (issue 31: the 64-128-10 step at
batch 128 ran 1.76x slower on 2 threads than on 1), so, as PyTorch's parallel loops take a grain size:
- every parallel kernel of distbp.nn.kernels, distbp.nn.losses and distbp.nn.optim is compiled twice
  (`parallel_kernel`): `kernel` itself (prange over Numba's pool) and `kernel.serial`, the same loops on the calling
  thread, and carries its grain (`kernel.grain`, elements). `sized(kernel, elements)` picks the serial twin below
  it. The two give the same bits: every sum in these kernels runs over chunks fixed by the data, not by the
  threads, and the element-wise work is the same operations in the same order (tests/unit/test_grain.py compares
  them);
- the optimizers' updates among them (UPDATE_GRAIN, in parameters). They once ran the parallel kernel with Numba's
  pool set to one thread instead: compiled serially under Python's error model, which checks every divisor for
  zero, their loops did not vectorise. Under numpy's error model the twin is as fast as the parallel kernel on
  one thread and skips the pool's launch (benchmarks/grain.py's update rows);
- `matmul(a, b, out)` runs a product of fewer than PRODUCT_GRAIN multiply-adds on one BLAS thread (numpy's
  OpenBLAS is set to 1 around it: two ctypes calls of about 0.3 µs), larger ones on every thread the BLAS has.
  On a CPU where OpenBLAS's float32 products give other bits on 1 thread than on 2 (seen on AMD Zen 3), a run that
  asked for 2 threads now gets the 1-thread bits for its small products: results depend less on the thread count.

The grains come from benchmarks/grain.py on the 2-core AMD EPYC Zen 4 of these sessions (float32; tables in
docs/performance.md). Each call there comes after 50 µs of the caller's own work, as a step's kernels come after a
product or Python: by then the pool's workers sleep, and waking one cost 25-35 µs on this machine, more than most
small kernels compute (a 2-thread Adam update of 9,610 parameters after 40 µs of other work took 42 µs, on one
thread 5 µs). So relu's σ and every σ' ran faster on 2 threads only from about a million elements, the column
sums and the finite check never in the range measured (up to 2^20), cross-entropy and tanh from 16-32 K elements
(float32 tanh and sigmoid from 2^18 once their σ and the twins vectorised: VECTOR_HEAVY_GRAIN),
products from about 6 M multiply-adds (2 M: 1.3-1.5x slower on 2 threads). Called back to back (the pool kept
awake) the crossovers were 16-64 times smaller: a step that keeps the pool busy loses little to these grains, and
the large models' kernels and products are above them anyway. On 1 thread the twin is the faster one at every
size below its grain too: it skips the pool's launch (1-2.5 µs a call measured at 2,048-32,768 elements).
"""

from __future__ import annotations

import types
from typing import Callable

import numpy as np
from numba import njit

from distbp.host.threads import numpy_blas

# grains in elements of a kernel's work, by what an element costs, from the crossovers benchmarks/grain.py measured
# with the pool asleep before each call, as in a step (2 threads against the serial twin; docs/performance.md)
LIGHT_GRAIN = 1 << 20  # a few operations an element: relu's and linear's σ, every σ'
SUM_GRAIN = 1 << 21  # one pass that sums: the column sums (db), the finite check (never faster on 2 threads here)
MEDIUM_GRAIN = 1 << 19  # a dozen operations an element: dropout's hash, the mse loss, narrow_backward's k products
HEAVY_GRAIN = 1 << 15  # an exp, tanh or log an element (float64 sigmoid/tanh σ, softmax, cross-entropy); float64 Σx²
VECTOR_HEAVY_GRAIN = 1 << 18  # sigmoid's and tanh's σ in float32, whose exp and tanh are vectorised polynomials
UPDATE_GRAIN = 1 << 19  # parameters: an optimizer's update over fewer runs on one thread
PRODUCT_GRAIN = 1 << 22  # multiply-adds (rows · inner · columns): a product of fewer runs on one BLAS thread


def parallel_kernel(grain: int, float32_grain: int | None = None, **options) -> Callable:
    """Decorator: `njit(parallel=True, cache=True, error_model="numpy", **options)`, with the serial twin as `.serial`
    and the work from which the parallel kernel runs as `.grain` (see `sized`); `.float32_grain` (default: grain) for
    float32 work where `sized` is told the dtype (a σ whose float32 form vectorises costs less an element).

    The twin is compiled from a copy of the function named `<name>_serial`: Numba's on-disk cache keys a function
    by its name and code, not by its options, so a twin of the same name would load the parallel machine code."""
    def compile_both(py_func):
        # numpy's error model in both: a prange body gets it anyway, and under Python's (checking each divisor
        # for zero) the twin's divisions stayed scalar: sigmoid's σ on 512x1024 float32 took 3.2 ms on the twin
        # against 0.2 ms for the parallel kernel on one thread
        flags = {"error_model": "numpy", **options}
        kernel = njit(parallel=True, cache=True, **flags)(py_func)
        kernel.serial = njit(cache=True, **flags)(_renamed(py_func, "serial"))
        kernel.grain = grain
        kernel.float32_grain = float32_grain if float32_grain is not None else grain
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


_FLOAT32 = np.dtype(np.float32)


def sized(kernel, work: int, dtype: np.dtype | None = None) -> Callable:
    """`kernel.serial` for less work than `kernel.grain` (elements), else the parallel `kernel`; float32 work
    (dtype given) against `kernel.float32_grain`."""
    grain = kernel.float32_grain if dtype is _FLOAT32 else kernel.grain
    return kernel.serial if work < grain else kernel


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out (n, m) = a (n, k) · b (k, m), by numpy's BLAS; on one BLAS thread below PRODUCT_GRAIN multiply-adds."""
    restore = lower_blas(a.shape[0] * a.shape[1] * b.shape[1])
    try:
        np.matmul(a, b, out=out)
    finally:
        restore_blas(restore)


def lower_blas(work: int) -> int:
    """Before a product (or a pass whose largest product) of `work` multiply-adds: below PRODUCT_GRAIN, numpy's BLAS
    is set to one thread now; returns the count to give back to `restore_blas` (0: nothing was changed, as when the
    BLAS already runs on one thread, so the products of a lowered pass make no further switch)."""
    if work >= PRODUCT_GRAIN:
        return 0
    blas = numpy_blas()
    n = blas.get() if blas is not None else 1
    if n == 1:
        return 0
    blas.set(1)
    return n


def restore_blas(n: int) -> None:
    """numpy's BLAS back to n threads after `lower_blas` (n = 0: it changed nothing)."""
    if n:
        numpy_blas().set(n)


def _renamed(py_func, suffix: str):
    """A copy of py_func (same code, globals, defaults and closure) named `<name>_<suffix>`."""
    copy = types.FunctionType(py_func.__code__, py_func.__globals__, f"{py_func.__name__}_{suffix}",
                              py_func.__defaults__, py_func.__closure__)
    copy.__qualname__ = f"{py_func.__qualname__}_{suffix}"
    copy.__doc__, copy.__module__ = py_func.__doc__, py_func.__module__
    return copy
