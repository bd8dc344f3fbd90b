"""Which BLAS kernel set is fastest here for the step's shapes: OpenBLAS's SkylakeX, Haswell and Zen kernels (and BLIS).

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/blas_kernels.py               # 5 rounds, 1 and 2 threads
    .venv/bin/python benchmarks/blas_kernels.py --repeats 9 --kernels SkylakeX,Haswell,Zen,Cooperlake
    pip install --target /tmp/blis_pkg --no-deps blis
    .venv/bin/python benchmarks/blas_kernels.py --blis-path /tmp/blis_pkg               # adds BLIS's GEMMs (1 thread)

OpenBLAS picks its kernels from the CPU id when the library loads, and OPENBLAS_CORETYPE (read at that moment)
overrides the pick, so each kernel set runs in a child process of its own, started with the variable set. The
children run in turns: each round starts one child per kernel set (the order rotated from round to round), so load
from other processes falls on every kernel set alike; the table gives the medians over `--repeats` rounds, and the
"vs default" ratios are taken round by round (a child against the default's child of the same round) and then their
median, with the range over rounds beside it. The "best" rows take each child's fastest call instead of its median:
on a shared machine the call least disturbed by other processes (the medians of 2-thread cases swing with the load).

Each child measures, for each model (784-1024-1024-10 at batch 512, 784-256-10 at batch 128), dtype and thread count:
- the step's products through numpy's matmul (benchmarks/gemm_path.products: forward a·W, dW = aᵀ·δ, δ·Wᵀ with the
  model's transposed views), in GFLOP/s per product kind and for all of them together;
- a whole distbp step (loss_and_grad_into(validate=False) + a gradient-descent update, relu), in samples/s;
- the bits: a SHA-256 of the step's gradient and of every product's output on fixed inputs, compared between kernel
  sets by the parent (a kernel set's own blocking may change the order of the sums, and with it the last bits).
It reports the kernel set each loaded OpenBLAS really used (threadpoolctl's "architecture", else the library's
own openblas_get_corename). The BLIS child (`--blis-path`, a folder holding the `blis` package) times the same
products through blis.py.gemm; it has no thread pool and no step (numpy keeps its OpenBLAS), so it gives GEMM rows
at 1 thread only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

DEFAULT_KERNELS = "SkylakeX,Haswell,Zen"
MODELS = (((784, 1024, 1024, 10), 512), ((784, 256, 10), 128))
KINDS = ("a@W", "aT@d", "d@WT")  # the product kinds, as gemm_path.products names them
BLIS = "BLIS"  # the child that times blis.py.gemm instead of numpy's OpenBLAS


# ---- child: one kernel set, every case -------------------------------------------------------------------

def loaded_kernels() -> dict[str, str]:
    """Each loaded OpenBLAS's file name -> the kernel set it really uses (threadpoolctl when installed)."""
    from benchmarks.common import openblas_kernels
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return openblas_kernels()
    return {Path(i["filepath"]).name: i.get("architecture", "?") for i in threadpool_info()
            if i.get("internal_api") == "openblas"}


def digest(a) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def measure_case(sizes, batch: int, dtype: str, threads: int, inner: int, blis: bool) -> dict:
    """Median seconds of each product and of the step (inner calls, round-robin), and the bits' digests."""
    import numpy as np

    from benchmarks.common import interleaved_times
    from benchmarks.gemm_path import products
    from benchmarks.step import LR
    from distbp import GD, MLP
    from distbp.host.threads import set_threads

    set_threads(threads)
    path = "blis" if blis else "numpy"
    prods = products(list(sizes), batch, np.dtype(dtype))
    cases = {pr["name"]: pr[path] for pr in prods}
    if not blis:
        model = MLP(list(sizes), activation="relu", dtype=dtype, seed=0)
        opt = GD(model.n_params, model.dtype, lr=LR)
        grad = np.empty(model.n_params, model.dtype)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((batch, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], batch)
        model.loss_and_grad_into(X, y, grad, validate=False)  # on the untouched model: the bits compared
        bits = {"step gradient": digest(grad)}

        def step():
            model.loss_and_grad_into(X, y, grad, validate=False)  # as training calls it
            opt.step(model.flat_params, grad)
        cases["step"] = step
    else:
        bits = {}
    for pr in prods:  # every product once on its fixed inputs (products() draws them from seed 0)
        pr[path]()
        bits[pr["name"]] = digest(pr[path].__defaults__[-1])
    times = interleaved_times(cases, inner, warmup=2, lead=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the call least disturbed by other processes
    gflops = {}
    for kind in KINDS:
        mine = [pr for pr in prods if pr["name"].startswith(kind + " ")]
        if mine:
            gflops[kind] = sum(pr["flops"] for pr in mine) / sum(med[pr["name"]] for pr in mine) / 1e9
    gflops["all"] = sum(pr["flops"] for pr in prods) / sum(med[pr["name"]] for pr in prods) / 1e9
    gflops["all best"] = sum(pr["flops"] for pr in prods) / sum(best[pr["name"]] for pr in prods) / 1e9
    out = {"gemm_gflops": gflops, "gemm_s": sum(med[pr["name"]] for pr in prods), "bits": bits}
    if "step" in med:
        out["step_s"], out["samples_per_s"] = med["step"], batch / med["step"]
        out["best_samples_per_s"] = batch / best["step"]
    return out


def child(args) -> None:
    import distbp  # noqa: F401,I001  (first: the pool waits every distbp process runs with, before numpy loads)
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401  (loads SciPy's OpenBLAS, the one numba's np.dot calls, to report its pick)
    blis = args.kernel == BLIS
    if blis:
        from benchmarks.gemm_path import blis_gemm
        if blis_gemm is None:
            raise SystemExit("the BLIS child found no blis package on its PYTHONPATH (--blis-path)")
    results = {}
    for sizes, batch in MODELS:
        for dtype in args.dtypes:
            for t in ([1] if blis else args.threads):
                key = f"{'-'.join(map(str, sizes))} b{batch} {dtype} {t}t"
                results[key] = measure_case(sizes, batch, dtype, t, args.inner, blis)
    Path(args.child_out).write_text(json.dumps({"kernel": args.kernel, "loaded": loaded_kernels(),
                                                "results": results}))


# ---- parent: children in turns, then the tables -----------------------------------------------------------

def run_child(kernel: str, args, out: Path) -> dict:
    env = dict(os.environ)
    if kernel == BLIS:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.blis_path, env.get("PYTHONPATH")]))
    else:
        env["OPENBLAS_CORETYPE"] = kernel
    cmd = [sys.executable, __file__, "--child", "--kernel", kernel, "--child-out", str(out), "--inner",
           str(args.inner), "--threads", ",".join(map(str, args.threads)), "--dtypes", ",".join(args.dtypes)]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(out.read_text())


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3f}-{max(xs):.3f}"


def summarise(kernels: list[str], rounds: list[dict[str, dict]], default: str) -> tuple[list[dict], dict]:
    """Table rows (one per case and quantity, a column per kernel set) and the per-case comparison for the JSON."""
    cases = list(rounds[0][default]["results"])
    rows, summary = [], {}
    for case in cases:
        quantities = [("step samples/s", lambda r: r.get("samples_per_s")),
                      ("step best samples/s", lambda r: r.get("best_samples_per_s"))]
        quantities += [(f"{k} GFLOP/s", lambda r, k=k: r["gemm_gflops"].get(k)) for k in (*KINDS, "all", "all best")]
        summary[case] = {}
        for qname, get in quantities:
            row = {"case": case, "quantity": qname}
            entry = {}
            for k in kernels:
                vals = [get(rd[k]["results"][case]) for rd in rounds if case in rd[k]["results"]]
                vals = [v for v in vals if v is not None]
                if not vals:
                    continue
                # round by round against the default's child of the same round: a paired ratio
                ratios = [get(rd[k]["results"][case]) / get(rd[default]["results"][case]) for rd in rounds
                          if case in rd[k]["results"] and get(rd[k]["results"][case]) is not None]
                entry[k] = {"median": statistics.median(vals), "vs_default_median": statistics.median(ratios),
                            "vs_default_by_round": ratios}
                row[k] = statistics.median(vals)
                if k != default:
                    row[f"{k}/{default}"] = f"{statistics.median(ratios):.3f} ({spread(ratios)})"
            if entry:
                row["winner"] = max(entry, key=lambda k: entry[k]["median"])
                summary[case][qname] = entry
                rows.append(row)
    return rows, summary


def bits_report(kernels: list[str], first: dict[str, dict]) -> dict:
    """For each case and output: the kernel sets grouped by identical bits (one group: the same bits everywhere)."""
    report = {}
    for case in first[kernels[0]]["results"]:
        for output in first[kernels[0]]["results"][case]["bits"]:
            groups: dict[str, list[str]] = {}
            for k in kernels:
                h = first[k]["results"].get(case, {}).get("bits", {}).get(output)
                if h is not None:
                    groups.setdefault(h, []).append(k)
            report[f"{case} | {output}"] = list(groups.values())
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", default=DEFAULT_KERNELS,
                   help="OPENBLAS_CORETYPE values, comma separated; the first is the baseline of the ratios")
    p.add_argument("--blis-path", default=None, help="a folder holding the blis package: adds a BLIS child")
    p.add_argument("--threads", default="1,2", help="thread counts, comma separated")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--repeats", type=int, default=5, help="rounds of children (one per kernel set a round)")
    p.add_argument("--inner", type=int, default=7, help="timed calls of each case inside a child (median)")
    p.add_argument("--out", default="results/blas_kernels.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kernel", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.threads = [int(t) for t in args.threads.split(",")]
    args.dtypes = args.dtypes.split(",")
    if args.child:
        child(args)
        return
    if args.blis_path is not None and not (Path(args.blis_path) / "blis").is_dir():
        raise SystemExit(f"--blis-path {args.blis_path}: no blis package there "
                         f"(pip install --target {args.blis_path} --no-deps blis)")
    kernels = args.kernels.split(",") + ([BLIS] if args.blis_path else [])
    default = kernels[0]

    from benchmarks.common import machine, print_table, write_json
    load_start = os.getloadavg()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            order = kernels[r % len(kernels):] + kernels[:r % len(kernels)]  # rotated: no set always runs first
            rounds.append({k: run_child(k, args, Path(tmp) / f"{r}-{k}.json") for k in order})
            print(f"round {r + 1}/{args.repeats} done, load {os.getloadavg()[0]:.2f}", flush=True)
    load_end = os.getloadavg()

    loaded = {k: rounds[0][k]["loaded"] for k in kernels}
    for k in kernels:
        print(f"{k}: OpenBLAS kernels really used: {loaded[k]}")
    rows, summary = summarise(kernels, rounds, default)
    columns = ["case", "quantity", *kernels, *[f"{k}/{default}" for k in kernels[1:]], "winner"]
    info = machine()
    print_table(rows, columns, title=f"step's products and step by kernel set; median of {args.repeats} rounds "
                                     f"(ratios: median and range of the per-round ratios); {info['cpu']}, load "
                                     f"{load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    bits = bits_report(kernels, rounds[0])
    differ = {name: groups for name, groups in bits.items() if len(groups) > 1}
    for case in rounds[0][default]["results"]:
        mine = {name.split(" | ", 1)[1]: groups for name, groups in bits.items() if name.startswith(case + " | ")}
        step = mine.pop("step gradient", None)
        split = [name for name, groups in mine.items() if len(groups) > 1]
        print(f"bits, {case}: step gradient {' | '.join(','.join(g) for g in step) if step else '-'}; "
              f"{len(split)} of {len(mine)} products differ between kernel sets")
    winners = {}
    for case, qs in summary.items():
        step = qs.get("step samples/s")
        if step:
            winners[case] = max(step, key=lambda k: step[k]["median"])
            print(f"winner by step, {case}: {winners[case]} "
                  f"({step[winners[case]]['vs_default_median']:.3f}x {default})")
    write_json(args.out, {"benchmark": "blas_kernels", "kernels": kernels, "default": default,
                          "repeats": args.repeats, "inner": args.inner, "load_start": load_start,
                          "load_end": load_end, "machine": info, "loaded_kernels": loaded, "summary": summary,
                          "step_winners": winners, "bits": bits, "bits_differ": differ})


if __name__ == "__main__":
    main()
