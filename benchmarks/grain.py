"""Grain sizes: from how much work a kernel or a product runs faster on 2 threads than on 1 (distbp.nn.grain).

    .venv/bin/python benchmarks/grain.py                 # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/grain.py --repeats 9 --dtype float64

Kernels (float32 by default, relu and tanh, 256 columns, rows so that the elements run from 2^11 to 2^20): each
timed three ways in turns, in µs per call: `parallel 1` (the prange kernel on 1 Numba thread), `serial` (its twin,
no pool), `parallel 2` (the prange kernel on 2 threads). Products z = a·W and dW = aᵀ·δ of the case set's shapes,
on 1 and 2 BLAS threads (numpy's OpenBLAS), and `matmul 2`: distbp.nn.grain.matmul with 2 threads set. Each call
comes after --gap-us (50) µs of the calling thread's own work, as in a step, where a kernel follows a product or
Python: by then the pool's workers sleep, and waking them measured 30-40 µs here (a 2-thread Adam update of 9,610
parameters after 40 µs of other work: 42 µs against 5 µs on one thread). --gap-us 0 times calls back to back.
Medians of --repeats rounds. --kernels adam,lamb times only those (comma-separated parts of the names).

The last lines give the grains this machine shows: the least work from which 2 threads beat 1 on every larger case,
beside the constants distbp.nn.grain holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: the thread pools' waits before numpy loads)
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from distbp.host.threads import thread_setter  # noqa: E402
from distbp.nn import grain, kernels, optim  # noqa: E402
from distbp.nn.losses import cross_entropy_delta, mse_delta  # noqa: E402

COLUMNS = 256
GRAINS = ("LIGHT_GRAIN", "SUM_GRAIN", "MEDIUM_GRAIN", "HEAVY_GRAIN", "UPDATE_GRAIN", "PRODUCT_GRAIN")
ROWS = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]  # × 256 columns: 2^11 … 2^20 elements
# (rows, inner, columns) of the case set's products (benchmarks/small_models.py): z = a·W, and dW = aᵀ·δ as
# (inner, rows, columns) transposed
PRODUCTS = [(32, 64, 128), (128, 64, 128), (32, 784, 256), (128, 784, 256), (512, 784, 256), (32, 256, 784),
            (128, 128, 128), (256, 256, 256), (512, 1024, 1024)]


def per_call_us(fn, calls: int, gap_us: float) -> float:
    """µs per call of fn; with gap_us > 0 each call comes after the calling thread spun that long on its own (as a
    step's kernel comes after a product or Python), so the pool's idle workers have gone to sleep, as in a step."""
    if gap_us <= 0:
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls * 1e6
    total, gap = 0.0, gap_us * 1e-6
    for _ in range(calls):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < gap:
            pass
        t0 = time.perf_counter()
        fn()
        total += time.perf_counter() - t0
    return total / calls * 1e6


def calls_for(fn, gap_us: float) -> int:
    """Calls that take about a millisecond of their own (at least 3; at most 200 with gaps)."""
    fn()
    t0 = time.perf_counter()
    fn()
    calls = max(3, int(1e-3 / max(time.perf_counter() - t0, 1e-7)))
    return min(calls, 200) if gap_us > 0 else calls


def timed_in_turns(variants: dict, repeats: int, gap_us: float) -> dict[str, float]:
    """Median µs per call of each (threads, fn) variant, the variants in turns."""
    set_threads = thread_setter()
    calls = {}
    for name, (n, fn) in variants.items():
        set_threads(n)
        calls[name] = calls_for(fn, gap_us)
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, (n, fn) in variants.items():
            set_threads(n)
            fn()
            times[name].append(per_call_us(fn, calls[name], gap_us))
    return {name: statistics.median(ts) for name, ts in times.items()}


def kernel_cases(dtype, rng) -> list[tuple[str, int, object, object]]:
    """(case, work, kernel, a function calling kernel or its twin k) for every kernel and size."""
    forward = {act: kernels.bias_activation_forward_for(act) for act in ("relu", "tanh")}
    backward = {act: kernels.activation_backward_for(act) for act in ("relu", "tanh")}
    narrow = kernels.narrow_backward_for("relu")
    cases = []
    for n in ROWS:
        z = rng.standard_normal((n, COLUMNS)).astype(dtype)
        a, g, d = np.empty_like(z), rng.standard_normal((n, COLUMNS)).astype(dtype), np.empty_like(z)
        b, db = np.zeros(COLUMNS, dtype), np.empty(COLUMNS, dtype)
        partial = np.empty((-(-n // kernels.ROW_CHUNK), COLUMNS), dtype)
        d_next, w_t = rng.standard_normal((n, 10)).astype(dtype), rng.standard_normal((10, COLUMNS)).astype(dtype)
        size = n * COLUMNS
        for act in ("relu", "tanh"):
            cases += [(f"bias_activation_forward {act}", size, forward[act], lambda k, z=z, a=a, b=b: k(z, a, b)),
                      (f"activation_backward {act}", size, backward[act],
                       lambda k, d=d, g=g, a=a, db=db, p=partial: k(d, g, a, db, p))]
        rows, key = np.arange(n, dtype=np.int64), np.uint64(kernels.dropout_key(0, 1, 0))
        scale = np.dtype(dtype).type(2.0)
        cases += [("column_sum", size, kernels.column_sum, lambda k, g=g, db=db, p=partial: k(g, db, p)),
                  ("narrow_backward relu (k=10)", size, narrow,
                   lambda k, d=d, dn=d_next, w=w_t, a=a, db=db, p=partial: k(d, dn, w, a, db, p)),
                  ("dropout_forward", size, kernels.dropout_forward,
                   lambda k, o=d, a=z, r=rows, key=key, s=scale: k(o, a, r, np.int64(0), key,
                                                                   kernels.dropout_threshold(0.5), s)),
                  ("all_finite", size, kernels.all_finite, lambda k, x=z.reshape(-1): k(x)),
                  ("sum_of_squares", size, kernels.sum_of_squares, lambda k, x=z.reshape(-1): k(x))]
        logits, labels = rng.standard_normal((n * 25, 10)).astype(dtype), rng.integers(0, 10, n * 25)
        out, delta, rl = np.empty_like(logits), np.empty_like(logits), np.empty(n * 25, dtype)
        targets = rng.standard_normal((n * 25, 10)).astype(dtype)
        cases += [("cross_entropy_delta (10 classes)", logits.size, cross_entropy_delta,
                   lambda k, z=logits, y=labels, o=out, dl=delta, r=rl: k(z, y, o, dl, r)),
                  ("mse_delta (10 outputs)", logits.size, mse_delta,
                   lambda k, z=logits, y=targets, o=out, dl=delta, r=rl: k(z, y, o, dl, r))]
        params, grads = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
        t = np.dtype(dtype).type
        m, v = np.zeros_like(params), np.zeros_like(params)
        segs = np.array([[0, size, 0, 1]], np.int64)
        cases += [("momentum_update", size, optim.momentum_update,
                   lambda k, p=params, g=grads, u=m: k(p, g, u, t(1e-9), t(1), t(0.9))),
                  ("adam_update", size, optim.adam_update,
                   lambda k, p=params, g=grads, m=m, v=v: k(p, g, m, v, t(1e-9), t(1), t(0.9), t(0.999), t(1e-8))),
                  ("lamb_update", size, optim.lamb_update,
                   lambda k, p=params, m=m, v=v, s=segs: k(p, m, v, np.array([1e-9], dtype), t(1), t(1e-6), s,
                                                          t(0)))]
    return cases


def crossover(rows: list[dict], fast: str, slow: str) -> int | None:
    """The least work from which `fast` beat `slow` on this case and every larger one (None: never)."""
    ordered = sorted(rows, key=lambda r: r["work"])
    for i, r in enumerate(ordered):
        if all(s[fast] < s[slow] for s in ordered[i:]):
            return r["work"]
    return None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--gap-us", type=float, default=50.0,
                   help="the calling thread's own work before each call, µs (0: calls back to back, the pool kept hot)")
    p.add_argument("--kernels", default="",
                   help="only the kernels whose names contain one of these comma-separated words (products: none "
                        "unless 'products' is one)")
    p.add_argument("--out", default="results/grain.json")
    args = p.parse_args(argv)
    wanted = [w for w in args.kernels.split(",") if w]
    dtype, rng = np.dtype(args.dtype), np.random.default_rng(0)

    kernel_rows = []
    for name, work, kernel, call in kernel_cases(dtype, rng):
        if wanted and not any(w in name for w in wanted):
            continue
        t = timed_in_turns({"parallel 1": (1, lambda: call(kernel)), "serial": (1, lambda: call(kernel.serial)),
                            "parallel 2": (2, lambda: call(kernel))}, args.repeats, args.gap_us)
        row = dict(kernel=name, work=work, **t)
        row["2 thr / serial"] = t["parallel 2"] / t["serial"]
        row["grain"] = kernel.grain
        row["grain picks"] = "serial" if work < kernel.grain else "parallel"
        kernel_rows.append(row)
    print_table(kernel_rows, ["kernel", "work", "parallel 1", "serial", "parallel 2", "2 thr / serial",
                              "grain", "grain picks"],
                f"kernels, {args.dtype}, µs per call after {args.gap_us:g} µs of the caller's own work "
                "(work: elements)")

    product_rows = []
    for rows, inner, cols in PRODUCTS if not wanted or "products" in wanted else ():
        a = rng.standard_normal((rows, inner)).astype(dtype)
        w = rng.standard_normal((inner, cols)).astype(dtype)
        z = np.empty((rows, cols), dtype)
        delta = rng.standard_normal((rows, cols)).astype(dtype)
        dw = np.empty((inner, cols), dtype)
        for kind, x, y, out in (("a·W", a, w, z), ("aᵀ·δ", a.T, delta, dw)):
            t = timed_in_turns({"blas 1": (1, lambda x=x, y=y, o=out: np.matmul(x, y, out=o)),
                                "blas 2": (2, lambda x=x, y=y, o=out: np.matmul(x, y, out=o)),
                                "matmul 2": (2, lambda x=x, y=y, o=out: grain.matmul(x, y, o))}, args.repeats,
                               args.gap_us)
            product_rows.append(dict(product=kind, shape=f"{rows}x{inner}x{cols}", work=rows * inner * cols, **t,
                                     **{"2 thr / 1": t["blas 2"] / t["blas 1"],
                                        "matmul 2 / best": t["matmul 2"] / min(t["blas 1"], t["blas 2"])}))
    product_rows.sort(key=lambda r: r["work"])
    if product_rows:
        print_table(product_rows, ["product", "shape", "work", "blas 1", "blas 2", "matmul 2", "2 thr / 1",
                                   "matmul 2 / best"],
                    f"products, {args.dtype}, µs per call (work: multiply-adds; matmul 2: distbp.nn.grain.matmul on "
                    f"2 threads, one thread below {grain.PRODUCT_GRAIN:,})")

    found = {name: crossover([r for r in kernel_rows if r["kernel"] == name], "parallel 2", "serial")
             for name in dict.fromkeys(r["kernel"] for r in kernel_rows)}
    for name, work in found.items():
        print(f"{name}: 2 threads beat the serial twin from {work if work is None else f'{work:,}'} elements on")
    product_grain = crossover([dict(work=r["work"], one=r["blas 1"], two=r["blas 2"]) for r in product_rows],
                              "two", "one")
    if product_rows:
        shown = product_grain if product_grain is None else f"{product_grain:,}"
        print(f"products: 2 BLAS threads beat 1 from {shown} multiply-adds on")
    print("distbp.nn.grain: " + ", ".join(f"{name} {getattr(grain, name):,}" for name in GRAINS))
    write_json(args.out, dict(machine=machine(), dtype=args.dtype, repeats=args.repeats, gap_us=args.gap_us,
                              kernels=kernel_rows, products=product_rows, crossover_kernels=found,
                              crossover_products=product_grain,
                              grains={name: getattr(grain, name) for name in GRAINS}))


if __name__ == "__main__":
    main()
