"""Which GEMM path the model takes: numpy's matmul into a preallocated out vs np.dot inside @njit vs BLIS.

    .venv/bin/python benchmarks/gemm_path.py                       # 784-1024-1024-10, batch 512, 1 and 2 threads
    .venv/bin/python benchmarks/gemm_path.py --threads 1 --repeats 30
    OPENBLAS_CORETYPE=SkylakeX .venv/bin/python benchmarks/gemm_path.py   # both OpenBLAS builds on AVX-512

For each product kind of the MLP step, with the transposed views the model uses
(a@W, aᵀ@δ with aᵀ a view of a row-major a, δ@Wᵀ with Wᵀ a view of W):
numpy's np.matmul(A, B, out=C), which calls numpy's OpenBLAS, against np.dot(A, B, C)
inside an @njit function, which calls SciPy's OpenBLAS (another build and thread
pool), and, when the `blis` package is installed (`pip install blis`: BLIS's kernels for Zen,
Haswell and SkylakeX, chosen at run time), blis.py.gemm with the same transposes, which
runs on one thread (that build has no thread pool: its 2-thread figures are 1-thread ones).
All run round-robin in one process; the table gives GFLOP/s and the ratios.
It also checks that np.matmul with the transposed views makes no hidden copy
(it would show as a large allocation during the call).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from benchmarks.common import interleaved_times, machine, openblas_kernels, print_table, write_json  # noqa: E402
from distbp.host.threads import blas_threads, cores_available, set_threads  # noqa: E402

try:
    from blis.py import gemm as blis_gemm
except ImportError:  # optional: the benchmark then compares the two OpenBLAS paths
    blis_gemm = None

PATHS = ("numpy", "njit") + (("blis",) if blis_gemm is not None else ())


@njit(cache=True)
def dot_a_w(a, W, out):
    np.dot(a, W, out)


@njit(cache=True)
def dot_at_d(a, d, out):
    np.dot(a.T, d, out)


@njit(cache=True)
def dot_d_wt(d, W, out):
    np.dot(d, W.T, out)


def products(sizes: list[int], n: int, dtype) -> list[dict]:
    """Every product kind per layer: name, numpy call, njit call, flops."""
    rng = np.random.default_rng(0)
    out = []
    for l, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        a = rng.random((n, fi)).astype(dtype)
        W = rng.standard_normal((fi, fo)).astype(dtype)
        d = rng.standard_normal((n, fo)).astype(dtype)
        z, dW, g = np.empty((n, fo), dtype), np.empty((fi, fo), dtype), np.empty((n, fi), dtype)
        fl = 2 * n * fi * fo
        out.append({"name": f"a@W     {n}x{fi} @ {fi}x{fo}", "flops": fl,
                    "numpy": lambda a=a, W=W, z=z: np.matmul(a, W, out=z),
                    "njit": lambda a=a, W=W, z=z: dot_a_w(a, W, z),
                    "blis": lambda a=a, W=W, z=z: blis_gemm(a, W, out=z, beta=0.0)})
        out.append({"name": f"aT@d    {fi}x{n} @ {n}x{fo}", "flops": fl,
                    "numpy": lambda a=a, d=d, dW=dW: np.matmul(a.T, d, out=dW),
                    "njit": lambda a=a, d=d, dW=dW: dot_at_d(a, d, dW),
                    "blis": lambda a=a, d=d, dW=dW: blis_gemm(a, d, out=dW, trans1=True, beta=0.0)})
        if l > 0:
            out.append({"name": f"d@WT    {n}x{fo} @ {fo}x{fi}", "flops": fl,
                        "numpy": lambda d=d, W=W, g=g: np.matmul(d, W.T, out=g),
                        "njit": lambda d=d, W=W, g=g: dot_d_wt(d, W, g),
                        "blis": lambda d=d, W=W, g=g: blis_gemm(d, W, out=g, trans2=True, beta=0.0)})
    return out


def hidden_copy_bytes(fn) -> int:
    """Peak bytes numpy allocates during one call (0 when matmul writes straight into `out`)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", default=f"1,{max(2, cores_available())}")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--lead", type=int, default=2, help="untimed calls of each product before it is timed")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between blocks, so idle BLAS workers stop")
    p.add_argument("--out", default="results/gemm_path.json")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.layers.split(",")]
    prods = products(sizes, args.batch, np.dtype(args.dtype))
    # numba loads SciPy's OpenBLAS on the first np.dot call; set_threads only reaches
    # libraries already loaded, so call every path once before setting threads
    for pr in prods:
        pr["njit"]()
    if blis_gemm is not None:  # same results as numpy's, so the comparison is of equals
        for pr in prods:
            pr["numpy"]()
            want = pr["numpy"].__defaults__[-1].copy()
            pr["blis"]()
            got = pr["blis"].__defaults__[-1]
            assert np.allclose(got, want, rtol=1e-3, atol=1e-3), pr["name"]

    rows, results = [], []
    for t in dict.fromkeys(int(x) for x in args.threads.split(",")):
        set_threads(t)
        # the two paths use two OpenBLAS copies with separate pools, whose idle workers spin
        # ~0.1 s after a call: timing one path straight after the other measured both
        # (2 threads looked no faster than 1). so each round times one path's products as
        # a block, after a pause, and the paths alternate from round to round.
        times = {(k, path): [] for k in range(len(prods)) for path in PATHS}
        for _ in range(args.repeats):
            for path in PATHS:
                time.sleep(args.pause)
                block = interleaved_times({k: pr[path] for k, pr in enumerate(prods)}, 1, warmup=args.lead)
                for k, ts in block.items():
                    times[(k, path)] += ts
        med = {key: statistics.median(ts) for key, ts in times.items()}
        for k, pr in enumerate(prods):
            r = {"threads": t, "product": pr["name"],
                 "numpy matmul GFLOP/s": pr["flops"] / med[(k, "numpy")] / 1e9,
                 "njit np.dot GFLOP/s": pr["flops"] / med[(k, "njit")] / 1e9,
                 "numpy/njit": med[(k, "njit")] / med[(k, "numpy")],
                 "matmul alloc bytes": hidden_copy_bytes(pr["numpy"])}
            if "blis" in PATHS:
                r["blis GFLOP/s"] = pr["flops"] / med[(k, "blis")] / 1e9
                r["numpy/blis"] = med[(k, "blis")] / med[(k, "numpy")]
            rows.append(r)
            results.append(r)
        tot = sum(pr["flops"] for pr in prods)
        rows.append({"threads": t, "product": "all (executed FLOPs / total time)",
                     "numpy matmul GFLOP/s": tot / sum(med[(k, "numpy")] for k in range(len(prods))) / 1e9,
                     "njit np.dot GFLOP/s": tot / sum(med[(k, "njit")] for k in range(len(prods))) / 1e9,
                     "numpy/njit": sum(med[(k, "njit")] for k in range(len(prods)))
                     / sum(med[(k, "numpy")] for k in range(len(prods)))})
        if "blis" in PATHS:
            rows[-1]["blis GFLOP/s"] = tot / sum(med[(k, "blis")] for k in range(len(prods))) / 1e9
            rows[-1]["numpy/blis"] = (sum(med[(k, "blis")] for k in range(len(prods)))
                                      / sum(med[(k, "numpy")] for k in range(len(prods))))
        results.append(dict(rows[-1], blas_threads=blas_threads()))
    columns = ["threads", "product", "numpy matmul GFLOP/s", "njit np.dot GFLOP/s", "numpy/njit"]
    columns += ["blis GFLOP/s", "numpy/blis"] if "blis" in PATHS else []
    print_table(rows, columns + ["matmul alloc bytes"],
                title=f"GEMM path, {args.dtype}, MLP {args.layers}, batch {args.batch}, median of {args.repeats}; "
                      f"OpenBLAS kernels {openblas_kernels()}")
    write_json(args.out, {"benchmark": "gemm_path", "layers": sizes, "batch": args.batch, "dtype": args.dtype,
                          "machine": machine(), "results": results})


if __name__ == "__main__":
    main()
