"""distbp across hosts with links of a chosen speed: every allreduce transport, side by side (as root).

    sudo .venv/bin/python benchmarks/multinode.py                      # ~15 minutes on 2 cores
    sudo .venv/bin/python benchmarks/multinode.py --quick              # ~5 minutes: 2x1 and 2x2, 2 rates
    sudo .venv/bin/python benchmarks/multinode.py --rates 1gbit,none --topologies 2x2 --plot docs/perf/multinode.png

Hosts are network namespaces on this machine (tests/helpers/netns.py) whose links tbf shapes to --rates on
both ends ("none": unshaped, whatever the kernel's TCP stack moves; benchmarks/links.py measures
what each rate carries). For every topology (hosts x ranks per host) and rate:

  bare       benchmarks/multinode_worker.py: the MPI library's Iallreduce (mpi), distbp's ring (ring)
             and the hierarchical allreduce (hier), each in float32 and with bfloat16 on the wire (+bf16),
             on single buckets of 64 KiB … 4 MiB and on the 7.45 MB gradient of MLP 784-1024-1024-10 in
             4 MiB buckets, taking turns in one job; the slowest rank's time, median of the turns
  training   `distbp train` of that MLP (float32, relu, momentum, lr 1e-4) on synthetic data for --epochs, one job per
             transport: step time and exposed communication (the wait for the sum after the backward
             pass, slowest rank) of the last epoch, held-out accuracy at the end, and the bytes each host
             moved per step (the most of eth0's sent and received bytes over the hosts, from the veth
             counters, whole job / steps: start-up's broadcast of the parameters is included)

The α–β model T(n) = α + β·n is fitted per transport and link to the single-bucket sizes (least squares
of the relative error, α >= 0), and checked on them and on the gradient (its buckets, each α + β·bucket).
The projection to 1024 nodes (`project`) takes each transport's latency from the unshaped 2x1 fit and the
share of the link it used from the 2x1 gradient on --project-from, for 10, 25 and 100 Gb/s and
--compute-ms of computation per step, no overlap: a model, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "helpers"))
sys.path.insert(0, str(REPO / "benchmarks"))
import netns  # noqa: E402
from common import print_table, write_json  # noqa: E402

WORKER = REPO / "benchmarks" / "multinode_worker.py"
LAYERS = "784,1024,1024,10"
TRANSPORTS = [("mpi", None), ("ring", None), ("hier", None), ("mpi", "bfloat16"), ("ring", "bfloat16"),
              ("hier", "bfloat16")]


def name(algorithm: str, codec: str | None) -> str:
    return algorithm + ("+bf16" if codec else "")


def log(msg: str) -> None:
    print(f"multinode: {msg}", file=sys.stderr, flush=True)


def bare(cluster: netns.Cluster, ranks_per_host: int, tmp: Path, repeats: int) -> dict:
    out = tmp / "bare.json"
    result = cluster.run(["python", str(WORKER), "--out", str(out), "--repeats", str(repeats)],
                         ranks_per_host=ranks_per_host, timeout=900)
    if result.returncode != 0:
        sys.exit(f"multinode: the bare allreduce job failed\n{result.output}")
    return json.loads(out.read_text())


def training(cluster: netns.Cluster, ranks_per_host: int, algorithm: str, codec: str | None, args,
             tmp: Path) -> dict:
    metrics = tmp / f"m-{algorithm}-{codec}.jsonl"
    command = ["distbp", "train", "--data", f"synthetic:rows={args.rows}", "--layers", LAYERS,
               "--batch-size", str(args.batch), "--epochs", str(args.epochs), "--allreduce", algorithm,
               "--activation", "relu", "--optimizer", "momentum", "--lr", "0.0001",
               "--progress", "none", "--metrics", str(metrics), "--timeout", "120"]
    if codec:
        command += ["--comm-dtype", codec]
    hosts = len(cluster.hosts)
    before = [cluster.counters(h) for h in range(hosts)]
    result = cluster.run(command, ranks_per_host=ranks_per_host, timeout=900)
    after = [cluster.counters(h) for h in range(hosts)]
    if result.returncode != 0:
        sys.exit(f"multinode: training with {name(algorithm, codec)} failed\n{result.output}")
    epochs = [json.loads(line) for line in metrics.read_text().splitlines() if '"epoch"' in line]
    epochs = [e for e in epochs if "eval_step" not in e]
    last, prev = epochs[-1], epochs[-2] if len(epochs) > 1 else {"steps": 0}
    steps = last["steps"] - prev["steps"]
    moved = max(max(a["tx"] - b["tx"], a["rx"] - b["rx"]) for a, b in zip(after, before))
    return {"step_s": last["time_s"] / steps, "exposed_s": last["comm_s"] / steps,
            "test_accuracy": last["test_accuracy"], "bytes_per_step": moved / last["steps"],
            "steps": last["steps"]}


def fit(seconds: dict[str, float]) -> dict:
    """α, β of T = α + β·n over the single-bucket sizes, least squares of the relative error (weights 1/T²,
    so the small sizes, where α shows, count as much as the large); relative errors on the sizes and on
    the gradient (2 buckets of at most 4 MiB: 2α + β·n)."""
    sizes = sorted(int(k) for k in seconds if k != "gradient")
    n = [float(s) for s in sizes]
    w = [1 / seconds[str(s)] ** 2 for s in sizes]
    t = [seconds[str(s)] for s in sizes]
    # normal equations of Σ w (α + β n − t)²
    sw, swn, swnn = sum(w), sum(a * b for a, b in zip(w, n)), sum(a * b * b for a, b in zip(w, n))
    swt, swnt = sum(a * c for a, c in zip(w, t)), sum(a * b * c for a, b, c in zip(w, n, t))
    det = sw * swnn - swn * swn
    alpha, beta = (swt * swnn - swn * swnt) / det, (sw * swnt - swn * swt) / det
    if alpha < 0:  # no latency is negative: the best fit through the origin instead (small buckets can pass
        alpha, beta = 0.0, swnt / swnn  # a shaper's burst at the unshaped speed, which bends the line)
    errors = {str(s): (alpha + beta * s) / seconds[str(s)] - 1 for s in sizes}
    gradient_bytes = 7_451_688
    buckets = math.ceil(gradient_bytes / (4 << 20))
    errors["gradient"] = (buckets * alpha + beta * gradient_bytes) / seconds["gradient"] - 1
    return {"alpha_s": alpha, "beta_s_per_byte": beta, "relative_errors": errors,
            "max_abs_error": max(abs(e) for e in errors.values())}


def project(latency_fits: dict, gradient_s: dict, rate_bps: float, compute_s: float, gradient_bytes: float,
            nodes: list[int], rates: list[float], ranks_per_node: int = 8) -> list[dict]:
    """Weak-scaling efficiency compute / (compute + T(nodes)) at link rates `rates`, per transport.

    From 2 hosts x 1 rank: each step of a ring costs α' = α/2 of the unshaped link's fit (a 2-host ring has
    2 steps; shaped links' small buckets pass tbf's burst at the unshaped speed, so their own α are not
    latencies), and the bytes move at the fraction e of the link that the 7.45 MB gradient reached on the
    shaped link: e = (wire bytes · 8 / R) / (T − 2α'), wire bytes = n (2-host ring), n/2 with bfloat16.
    Then at rate R: ring, 2(p−1) steps over p = nodes·r ranks; hier, 2(h−1) steps over h nodes (the r
    slices at once share the link; the node's own shared-memory sum is left out); mpi, MPICH's
    large-message allreduce by recursive halving and doubling, 2·log2(p) steps. Bytes per node: 2(k−1)/k·n
    for k = p or h (halved with bfloat16)."""
    rows = []
    for algo, f in latency_fits.items():
        a1 = f["alpha_s"] / 2
        wire = gradient_bytes * (0.5 if "bf16" in algo else 1)
        e = wire * 8 / rate_bps / max(gradient_s[algo] - 2 * a1, 1e-9)
        for rate in rates:
            for h in nodes:
                p = h * ranks_per_node
                if algo.startswith("hier"):
                    steps, k = 2 * (h - 1), h
                elif algo.startswith("ring"):
                    steps, k = 2 * (p - 1), p
                else:
                    steps, k = 2 * math.ceil(math.log2(p)), p
                comm = steps * a1 + 2 * (k - 1) / k * wire * 8 / rate / e
                rows.append({"transport": algo, "rate_gbit": rate / 1e9, "nodes": h, "link use": e,
                             "allreduce_ms": 1e3 * comm, "efficiency": compute_s / (compute_s + comm)})
    return rows


def report(results: dict, args, elapsed: float, rates: list[str]) -> list[dict]:
    """Print the training table, the fits (added to `results`) and the projection; returns the projection."""
    rows, fit_rows = [], []
    for topo, runs in results.items():
        for rate, run in runs.items():
            for key, t in run["training"].items():
                bare_key = key.replace("+bf16", "+bfloat16")
                rows.append({"hosts x ranks": topo, "link": rate, "transport": key,
                             "step ms": 1e3 * t["step_s"], "exposed ms": 1e3 * t["exposed_s"],
                             "exposed %": 100 * t["exposed_s"] / t["step_s"],
                             "MB/host/step": t["bytes_per_step"] / 1e6, "accuracy %": 100 * t["test_accuracy"],
                             "bare gradient ms": 1e3 * run["bare"]["seconds"][bare_key]["gradient"]})
                f = fit(run["bare"]["seconds"][bare_key])
                run.setdefault("fits", {})[key] = f
                fit_rows.append({"hosts x ranks": topo, "link": rate, "transport": key, "alpha us": 1e6 * f["alpha_s"],
                                 "beta ps/B": 1e12 * f["beta_s_per_byte"],
                                 "Gbit/s": 8e-9 / f["beta_s_per_byte"] if f["beta_s_per_byte"] > 0 else None,
                                 "max error %": 100 * f["max_abs_error"],
                                 "gradient error %": 100 * f["relative_errors"]["gradient"]})
    print(f"MEASURED: MLP {LAYERS} float32 relu momentum, global batch {args.batch}, {args.epochs} epochs of "
          f"{args.rows} synthetic rows; {elapsed:.0f} s")
    print_table(rows, list(rows[0]), "\nTraining, one job per transport (last epoch; bytes: whole job / steps)")
    print_table(fit_rows, list(fit_rows[0]), "\nα–β fits of the bare allreduce (single buckets 64 KiB – 4 MiB; "
                                             "errors of the fit on them and on the bucketed gradient)")
    proj = []
    two = results.get("2x1", {})
    if args.project_from in two and "none" in two:
        shaped = two[args.project_from]["bare"]["seconds"]
        gradient_s = {name(*t): shaped[name(*t).replace("+bf16", "+bfloat16")]["gradient"] for t in TRANSPORTS}
        proj = project(two["none"]["fits"], gradient_s, netns.parse_rate(args.project_from), args.compute_ms * 1e-3,
                       7_451_688, [2, 16, 128, 1024], [10e9, 25e9, 100e9])
        print_table(proj, list(proj[0]), f"\nProjection (2x1: latency of the unshaped fit, link use at "
                                         f"{args.project_from}; 8 ranks per node, "
                                         f"{args.compute_ms:g} ms compute per step, no overlap; a model)")
    return proj


def plot(results: dict, path: str, projection: list[dict] | None = None) -> None:
    """Step time against link rate per topology (measured), and efficiency against nodes (projected)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot written")
        return
    topologies = list(results)
    panels = len(topologies) + (1 if projection else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    for ax, topo in zip(axes[0], topologies):
        runs = results[topo]
        labels = list(runs)
        for algo, codec in TRANSPORTS:
            key = name(algo, codec)
            ax.plot(labels, [1e3 * runs[r]["training"][key]["step_s"] for r in labels], marker="o",
                    linestyle="--" if codec else "-", label=key)
        ax.set_title(f"{topo} (hosts x ranks)")
        ax.set_xlabel("link rate")
        ax.set_ylabel("step time (ms)")
    axes[0][0].legend(fontsize=8)
    if projection:
        ax = axes[0][-1]
        for algo, codec in TRANSPORTS:
            key = name(algo, codec)
            pts = sorted((p["nodes"], p["efficiency"]) for p in projection if p["transport"] == key
                         and p["rate_gbit"] == 25)
            ax.plot([n for n, _ in pts], [e for _, e in pts], marker="o", linestyle="--" if codec else "-", label=key)
        ax.set_xscale("log", base=2)
        ax.set_title("PROJECTED, 25 Gb/s, 8 ranks per node")
        ax.set_xlabel("nodes")
        ax.set_ylabel("weak-scaling efficiency")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--topologies", default="2x1,2x2,3x1", help="hosts x ranks per host, comma-separated")
    p.add_argument("--rates", default="1gbit,2gbit,none", help="link rates ('none': unshaped)")
    p.add_argument("--rows", type=int, default=4608, help="synthetic training rows (10 %% held out)")
    p.add_argument("--batch", type=int, default=512, help="global batch")
    p.add_argument("--epochs", type=int, default=3, help="(3 reach about 90 %% held-out accuracy on 1 rank)")
    p.add_argument("--repeats", type=int, default=7, help="turns of the bare allreduce job")
    p.add_argument("--compute-ms", type=float, default=41.0, help="compute per step for the projection")
    p.add_argument("--quick", action="store_true", help="2x1 and 2x2 at 1gbit and unshaped, fewer turns")
    p.add_argument("--out", default="results/multinode.json")
    p.add_argument("--plot", help="PNG of step time against link rate per topology (needs matplotlib)")
    p.add_argument("--project-from", default="1gbit", help="the 2x1 link whose fits the projection uses")
    p.add_argument("--analyse", help="the tables of a saved --out JSON again, refitted, into --out (no namespaces)")
    args = p.parse_args(argv)
    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        saved["projection"] = report(saved["results"], args, saved["elapsed_s"], [])
        write_json(args.out, saved)
        if args.plot:
            plot(saved["results"], args.plot, saved["projection"])
        return 0
    if args.quick:
        args.topologies, args.rates, args.repeats = "2x1,2x2", "1gbit,none", 5
    reason = netns.unavailable_reason()
    if reason:
        log(f"cannot run: {reason}")
        return 2
    topologies = [tuple(int(x) for x in t.split("x")) for t in args.topologies.split(",")]
    rates = args.rates.split(",")
    results: dict = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for hosts, per_host in topologies:
            topo = f"{hosts}x{per_host}"
            for rate in rates:
                cluster = netns.Cluster(hosts, rate=None if rate == "none" else rate)
                try:
                    cluster.create()
                    t0 = time.monotonic()
                    run = {"bare": bare(cluster, per_host, Path(tmp), args.repeats), "training": {}}
                    for algo, codec in TRANSPORTS:
                        run["training"][name(algo, codec)] = training(cluster, per_host, algo, codec, args, Path(tmp))
                    log(f"{topo} at {rate}: {time.monotonic() - t0:.0f} s")
                finally:
                    cluster.destroy()
                results.setdefault(topo, {})[rate] = run
    elapsed = time.monotonic() - started

    proj = report(results, args, elapsed, rates)
    write_json(args.out, {"results": results, "projection": proj, "elapsed_s": elapsed, "args": vars(args)})
    if args.plot:
        plot(results, args.plot, proj)
    return 0


if __name__ == "__main__":
    sys.exit(main())
