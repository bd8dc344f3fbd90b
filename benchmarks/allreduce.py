"""Allreduce latency and bandwidth, gradient bucket sizes, and an alpha-beta-gamma projection to many nodes.

Measure on this machine (rank 0 prints a table and writes JSON):
    mpiexec -n 2 python -m mpi4py benchmarks/allreduce.py --out results/allreduce.json
Measure, then project step time and scaling efficiency for 2..1024 nodes:
    mpiexec -n 2 python -m mpi4py benchmarks/allreduce.py --project --plot results/scaling.png
Project again from a saved measurement, without MPI:
    python benchmarks/allreduce.py --project --fit results/allreduce.json --compute-ms 40

Ring allreduce model: T(n) = 2(p-1)a + 2(p-1)/p n b + (p-1)/p n g, a = latency per message, b = seconds
per byte on the wire, g = seconds per byte to add two buffers. b and g multiply the same n, so the
allreduce timings alone cannot separate them: g is measured by timing a local float32 add, then a and
b are fitted by non-negative least squares (relative errors) to the measured allreduce times.
Everything measured is labelled "measured"; the node-count table is a model ("projected").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distbp.comm.base import PIECE_BYTES
from distbp.comm.mpi import world  # noqa: E402
from distbp.sync.reducer import GradientReducer  # noqa: E402
from distbp.sync.transports import make_transport  # noqa: E402

MIB = 1 << 20
MLP = [784, 1024, 1024, 10]  # its float32 gradient is 7.45 MB
NETWORKS = {  # name: (latency a in seconds, bandwidth in bit/s)
    "25GbE": (10e-6, 25e9),
    "IB-100G": (1.5e-6, 100e9),
}


def median_time(comm, fn, repeats: int, warmup: int = 3) -> float:
    """Median over repeats of the slowest rank's time for fn() (seconds), after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(comm.max_scalar(time.perf_counter() - t0))
    return float(np.median(times))


def repeats_for(nbytes: int) -> int:
    return 100 if nbytes <= 256 << 10 else 20 if nbytes <= 16 * MIB else 7


def sweep_sizes(comm, max_bytes: int) -> list[dict]:
    """One allreduce call per message (no pieces) for 8 B .. max_bytes, and 16 MiB pieces above 16 MiB."""
    sizes = [8 << (2 * k) for k in range(11)] + [32 * MIB, 64 * MIB]  # 8 B, 32 B, ..., 8 MiB, then 32/64 MiB
    sizes = sorted({s for s in sizes + [16 * MIB] if s <= max_bytes})
    rows = []
    p = comm.size
    for nbytes in sizes:
        buf = np.zeros(nbytes // 4, np.float32)  # zeros: repeated sums stay finite
        t_one = median_time(comm, lambda: comm.allreduce_sum(buf, piece_bytes=1 << 62), repeats_for(nbytes))
        row = {"bytes": nbytes, "one_call_s": t_one, "busbw_GBps": 2 * (p - 1) / p * nbytes / t_one / 1e9}
        if nbytes > PIECE_BYTES:
            row["pieces_16MiB_s"] = median_time(comm, lambda: comm.allreduce_sum(buf), repeats_for(nbytes))
        rows.append(row)
    return rows


def mlp_layer_sizes(widths: list[int]) -> list[int]:
    return [fan_in * fan_out + fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:])]


def sweep_buckets(comm, repeats: int = 50) -> list[dict]:
    """The MLP gradient as one call, in 16 MiB pieces, and through GradientReducer: MPI's Iallreduce, distbp's ring
    and the hierarchical allreduce (on one node: sums in shared memory, no messages), several bucket sizes.

    All layers are ready at once (no compute to hide behind): this measures what bucketing costs.
    16-bit gradients (--comm-dtype) go both ways: MPI's Iallreduce with a user-defined op, and the
    ring, which sends 16-bit words and adds them in float32 with Numba kernels.
    The variants take turns within each repeat so that load from other processes hits them alike;
    "vs one call" and "vs ring" (the float32 ring with the same bucket size) are ratios of medians
    measured in this run.
    """
    sizes = mlp_layer_sizes(MLP)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    grad = np.zeros(int(bounds[-1]), np.float32)  # zeros: repeated sums stay finite
    # (label, step, buckets, the float32 ring it is compared with)
    variants = [("one call", lambda: comm.allreduce_sum(grad, piece_bytes=1 << 62), 1, None),
                ("16 MiB pieces", lambda: comm.allreduce_sum(grad), -(-grad.nbytes // PIECE_BYTES), None)]
    for bucket_bytes, comm_dtype, algorithm in [
            (256 << 10, None, "mpi"), (MIB, None, "mpi"), (4 * MIB, None, "mpi"), (8 * MIB, None, "mpi"),
            (MIB, None, "ring"), (4 * MIB, None, "ring"), (8 * MIB, None, "ring"),
            (4 * MIB, "bfloat16", "mpi"), (4 * MIB, "float16", "mpi"),
            (4 * MIB, "bfloat16", "ring"), (4 * MIB, "float16", "ring"),
            (MIB, None, "hier"), (4 * MIB, None, "hier"), (8 * MIB, None, "hier")]:
        # the hierarchical allreduce sums a gradient of its own, in the node's shared memory (transport.grad)
        transport = make_transport(algorithm, comm, grad.size, grad.dtype, max_bucket=bucket_bytes // grad.itemsize,
                                   comm_dtype=comm_dtype)
        reducer = GradientReducer(comm, grad if transport.grad is None else transport.grad, slices, bucket_bytes,
                                  overlap=True, transport=transport)

        def step(reducer=reducer):
            for layer in reversed(range(len(slices))):
                reducer.layer_ready(layer)
            reducer.finish()
        label = f"{algorithm} {bucket_bytes // 1024} KiB" + (f" {comm_dtype}" if comm_dtype else "")
        variants.append((label, step, len(reducer.buckets), f"ring {bucket_bytes // 1024} KiB"))
    times = {label: [] for label, *_ in variants}
    for rep in range(repeats + 3):  # the first 3 rounds are warm-up
        for label, fn, *_ in variants:
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            if rep >= 3:
                times[label].append(comm.max_scalar(time.perf_counter() - t0))
    base = float(np.median(times["one call"]))
    rows = []
    for label, _, buckets, ring in variants:
        seconds = float(np.median(times[label]))
        rows.append({"how": label, "buckets": buckets, "seconds": seconds, "GBps_alg": grad.nbytes / seconds / 1e9,
                     "vs_one_call": seconds / base,
                     "vs_ring": seconds / float(np.median(times[ring])) if ring in times else None})
    return rows


def measure_gamma(nbytes: int = 16 * MIB) -> float:
    """Seconds per byte of a local float32 add b += a (the reduction work in an allreduce)."""
    a, b = np.ones(nbytes // 4, np.float32), np.ones(nbytes // 4, np.float32)
    np.add(a, b, out=b)
    times = []
    for _ in range(9):
        t0 = time.perf_counter()
        np.add(a, b, out=b)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / nbytes


def ring_time(p: int, nbytes: float, alpha: float, beta: float, gamma: float) -> float:
    """Ring allreduce model time (seconds) for p ranks and nbytes."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta + (p - 1) / p * nbytes * gamma


def fit_alpha_beta(rows: list[dict], p: int, gamma: float) -> tuple[float, float]:
    """Non-negative least squares fit of a, b (relative errors) to the one-call allreduce times."""
    from scipy.optimize import nnls

    n = np.array([r["bytes"] for r in rows], float)
    t = np.array([r["one_call_s"] for r in rows], float)
    rhs = t - (p - 1) / p * n * gamma
    design = np.column_stack([np.full_like(n, 2 * (p - 1)), 2 * (p - 1) / p * n])
    # dividing each row by the measured time weighs 8 B and 64 MiB alike (relative error)
    (alpha, beta), _ = nnls(design / t[:, None], rhs / t)
    return float(alpha), float(beta)


def measured_compute_ms(batch: int) -> float:
    """One training step's matrix products for MLP on `batch` examples, timed with numpy (1 thread): a proxy."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((i, o)).astype(np.float32) for i, o in zip(MLP[:-1], MLP[1:])]
    x = rng.standard_normal((batch, MLP[0])).astype(np.float32)

    def step():
        acts = [x]
        for w in weights:  # forward: a' = a W
            acts.append(acts[-1] @ w)
        delta = acts[-1]
        for w, a in zip(reversed(weights), reversed(acts[:-1])):  # backward: dW = a^T delta, delta W^T
            a.T @ delta
            delta = delta @ w.T
    step()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def project(fit: dict, compute_ms: float, scaling: str) -> list[dict]:
    """Step time and efficiency for 2..1024 nodes on each network (a model, not a measurement).

    weak scaling: every node keeps its batch (compute per step constant); strong: the global batch
    is fixed (compute per node = compute_ms / nodes). Overlap assumes the backward pass (2/3 of the
    compute) can hide communication, the forward pass (1/3) cannot.
    """
    nbytes = fit["gradient_bytes"]
    rows = []
    for name, (alpha, bits_per_s) in NETWORKS.items():
        beta = 8 / bits_per_s
        for nodes in [2 ** k for k in range(1, 11)]:
            compute = compute_ms / 1e3 / (nodes if scaling == "strong" else 1)
            comm_s = ring_time(nodes, nbytes, alpha, beta, fit["gamma_s_per_byte"])
            no_overlap = compute + comm_s
            overlap = max(compute, compute / 3 + comm_s)
            rows.append({"network": name, "nodes": nodes, "compute_ms": 1e3 * compute, "allreduce_ms": 1e3 * comm_s,
                         "step_ms_no_overlap": 1e3 * no_overlap, "step_ms_overlap": 1e3 * overlap,
                         "efficiency_no_overlap": compute / no_overlap, "efficiency_overlap": compute / overlap})
    return rows


def print_measured(result: dict) -> None:
    p = result["ranks"]
    print(f"MEASURED on {result['host']} with {p} ranks ({result['mpi']}), median of repeats after warm-up")
    print(f"{'bytes':>10} {'one call us':>12} {'busbw GB/s':>11} {'16MiB pieces us':>16} {'model us':>9}")
    fit = result["fit"]
    for r in result["sizes"]:
        model = ring_time(p, r["bytes"], fit["alpha_s"], fit["beta_s_per_byte"], fit["gamma_s_per_byte"])
        pieces = f"{1e6 * r['pieces_16MiB_s']:16.0f}" if "pieces_16MiB_s" in r else f"{'':>16}"
        print(f"{r['bytes']:>10} {1e6 * r['one_call_s']:12.1f} {r['busbw_GBps']:11.2f} {pieces} {1e6 * model:9.1f}")
    print(f"\nMEASURED MLP {'-'.join(map(str, MLP))} float32 gradient ({result['gradient_bytes'] / 1e6:.2f} MB)")
    print(f"{'how':>26} {'buckets':>8} {'ms':>8} {'GB/s':>7} {'vs one call':>12} {'vs ring':>8}")
    for r in result["buckets"]:
        vs_ring = f"{r['vs_ring']:8.2f}" if r.get("vs_ring") is not None else f"{'':>8}"
        print(f"{r['how']:>26} {r['buckets']:>8} {1e3 * r['seconds']:8.3f} {r['GBps_alg']:7.2f} {r['vs_one_call']:12.2f} "
              f"{vs_ring}")
    print(f"\nFIT (ring model, NNLS): alpha = {1e6 * fit['alpha_s']:.2f} us, beta = {1e12 * fit['beta_s_per_byte']:.1f} ps/B "
          f"({8e-9 / max(fit['beta_s_per_byte'], 1e-300):.1f} Gb/s), gamma (measured local add) = "
          f"{1e12 * fit['gamma_s_per_byte']:.1f} ps/B")


def print_projection(rows: list[dict], compute_ms: float, compute_source: str, scaling: str) -> None:
    print(f"\nPROJECTED (model, not measured): {scaling} scaling, compute {compute_ms:.2f} ms/step per node "
          f"({compute_source}); ring allreduce with measured gamma")
    print(f"{'network':>8} {'nodes':>6} {'allreduce ms':>13} {'step ms':>8} {'eff':>6} {'step ms ovl':>12} {'eff ovl':>8}")
    for r in rows:
        print(f"{r['network']:>8} {r['nodes']:>6} {r['allreduce_ms']:13.3f} {r['step_ms_no_overlap']:8.2f} "
              f"{r['efficiency_no_overlap']:6.1%} {r['step_ms_overlap']:12.2f} {r['efficiency_overlap']:8.1%}")


def plot(rows: list[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(NETWORKS):
        mine = [r for r in rows if r["network"] == name]
        nodes = [r["nodes"] for r in mine]
        ax.plot(nodes, [r["efficiency_no_overlap"] for r in mine], "o-", color=f"C{i}", label=f"{name}, no overlap")
        ax.plot(nodes, [r["efficiency_overlap"] for r in mine], "s--", color=f"C{i}", label=f"{name}, overlap")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("scaling efficiency")
    ax.set_title("PROJECTED (ring allreduce model)")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/allreduce.json", help="JSON file rank 0 writes")
    parser.add_argument("--max-bytes", type=int, default=64 * MIB, help="largest message in the size sweep")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds of the gradient (bucket) sweep")
    parser.add_argument("--project", action="store_true", help="also project step time for 2..1024 nodes")
    parser.add_argument("--fit", help="take the fit from this JSON instead of measuring (no MPI needed)")
    parser.add_argument("--compute-ms", type=float, help="compute per step per node; default: measured GEMM proxy")
    parser.add_argument("--batch", type=int, default=128, help="per-node batch of the measured GEMM proxy")
    parser.add_argument("--scaling", choices=["weak", "strong"], default="weak")
    parser.add_argument("--plot", help="PNG of the projected efficiency (needs matplotlib)")
    args = parser.parse_args(argv)

    if args.fit:
        result = json.loads(Path(args.fit).read_text())
        is_root = True
    else:
        comm = world()
        is_root = comm.is_root  # only rank 0 prints and writes
        gamma = measure_gamma()
        sizes = sweep_sizes(comm, args.max_bytes)
        buckets = sweep_buckets(comm, args.repeats)
        alpha, beta = fit_alpha_beta(sizes, comm.size, gamma) if comm.size > 1 else (0.0, 0.0)
        result = {"host": platform.node(), "ranks": comm.size, "mpi": _mpi_version(),
                  "env": {k: v for k, v in os.environ.items() if k.startswith("MPIR_CVAR")},
                  "gradient_bytes": 4 * sum(mlp_layer_sizes(MLP)), "sizes": sizes, "buckets": buckets,
                  "fit": {"alpha_s": alpha, "beta_s_per_byte": beta, "gamma_s_per_byte": gamma,
                          "gradient_bytes": 4 * sum(mlp_layer_sizes(MLP))}}
        if is_root:
            print_measured(result)
    if not is_root:
        return
    if args.project:
        compute_ms, source = args.compute_ms, "given"
        if compute_ms is None:
            compute_ms, source = measured_compute_ms(args.batch), f"measured numpy GEMM proxy, batch {args.batch}"
        rows = project(result["fit"], compute_ms, args.scaling)
        print_projection(rows, compute_ms, source, args.scaling)
        result["projection"] = {"compute_ms": compute_ms, "compute_source": source, "scaling": args.scaling,
                                "networks": {k: {"alpha_s": a, "bits_per_s": b} for k, (a, b) in NETWORKS.items()},
                                "rows": rows}
        if args.plot:
            plot(rows, args.plot)
    if not args.fit or args.project:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"results written to {args.out}")


def _mpi_version() -> str:
    try:
        from mpi4py import MPI
        return MPI.Get_library_version().splitlines()[0].strip()
    except ImportError:
        return "none"


if __name__ == "__main__":
    main()
