"""Strong and weak scaling of distbp over ranks and threads, overlap, PyTorch baselines and memory per rank.

    python benchmarks/scaling.py                       # full run (~3 minutes on 2 cores)
    python benchmarks/scaling.py --quick               # < 1 minute, fewer steps
    python benchmarks/scaling.py --max-ranks 4 --plot results/scaling.png --out results/scaling.json

Plain python: it starts one MPI job per (ranks x threads) split with launch/local (benchmarks/scaling_worker.py)
and one PyTorch job per split (benchmarks/ddp_worker.py, when torch imports), and repeats the whole sequence
--repeats times (A, B, A, B) so that load from other processes on a shared machine hits every variant alike.
Model: MLP 784-1024-1024-10, float32, sigmoid, cross-entropy, gradient descent, random data.

Definitions (printed with the tables):
  step time      per step the slowest rank's time, median over all timed steps
  phases         median over steps on each rank, then the max over ranks:
                   compute = forward + backward + update, minus the time spent inside the reducer's hooks
                   hooks   = bucket starts and progress calls made during backward (MPI only moves inside them)
                   exposed = waiting in GradientReducer.finish (communication not hidden behind compute)
                   other   = the rest (global loss sum, Python)
  1x1 base       rank 0 alone on 1 thread, no communication, timed in turns inside the same job as the split
                 ("base ms"), so both see the same machine load; "eff 1x1 job" uses the separate 1x1 job instead
  strong scaling fixed global batch G: speed-up = step(1x1, G) / step; efficiency = speed-up / (ranks x threads)
  weak scaling   fixed per-rank batch P: speed-up = samples/s / samples/s(1x1, P); efficiency = speed-up /
                 (ranks x threads), which for 1 thread per rank is the per-rank throughput ratio
  transport      --allreduce (default hier, the node-aware allreduce `distbp train` uses on one node); "block" starts
                 the same buckets only after backward; "vs MPI" and "vs distbp's ring" time the same overlapped
                 buckets through the MPI library's Iallreduce and distbp's ring of messages
                 in turns in the same job
  ceiling        efficiency if the ranks computed at once without communicating ("nocomm" variant): what sharing
                 the machine's caches and memory bandwidth alone costs
  hidden         1 - exposed(overlapped buckets) / exposed(buckets after backward), same split and batch:
                 the share of the allreduce's wait that overlapping took off the critical path
  memory         peak = ru_maxrss; increment = peak - RSS after imports and kernel compilation (measured before
                 the model exists); theory = parameters + gradients + optimizer state + z, a per layer + g scratch
                 + row losses + the batch slice, from the layer sizes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "local"
WORKER = REPO / "benchmarks" / "scaling_worker.py"
DDP_WORKER = REPO / "benchmarks" / "ddp_worker.py"
LAYERS = "784,1024,1024,10"
MB = 1e6


def splits(cores: int, max_ranks: int) -> list[tuple[int, int]]:
    """(ranks, threads) to run: 1x1 (the base), then r x cores//r for r = 1..max_ranks."""
    out = [(1, 1)]
    for r in range(1, max_ranks + 1):
        s = (r, max(1, cores // r))
        if s not in out:
            out.append(s)
    return out


def run(cmd: list[str], what: str, attempts: int = 2) -> None:
    t0 = time.perf_counter()
    for _ in range(attempts):
        # one retry: PyTorch's gloo teardown sometimes aborts a finished job ("terminate called
        # without an active exception"), seen here on one DDP run in several
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        sys.exit(f"scaling: {what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  {what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def run_distbp(ranks: int, threads: int, batches: list[int], modes: str, solo: list[int], steps: dict,
               out: Path, allreduce: str = "ring") -> dict:
    cmd = [sys.executable, str(LAUNCH), "-n", str(ranks), "--threads", str(threads), "python", str(WORKER),
           "--layers", LAYERS, "--batches", ",".join(map(str, batches)), "--modes", modes, "--out", str(out),
           "--solo", ",".join(map(str, solo)), "--allreduce", allreduce,
           *[f"--{k}={v}" for k, v in steps.items()]]
    run(cmd, f"distbp {ranks}x{threads} batches {batches} {modes} ({allreduce})")
    return json.loads(out.read_text())


def run_torch(ranks: int, threads: int, batches: list[int], plain: bool, steps: dict, out: Path) -> dict:
    cmd = [sys.executable, str(DDP_WORKER), "--ranks", str(ranks), "--threads", str(threads), "--layers", LAYERS,
           "--batches", ",".join(map(str, batches)), "--out", str(out), *[f"--{k}={v}" for k, v in steps.items()]]
    if plain:
        cmd.append("--plain")
    run(cmd, f"{'pytorch' if plain else 'ddp'} {ranks}x{threads} batches {batches}")
    return json.loads(out.read_text())


def torch_available() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0


# ---- reductions over ranks and steps -------------------------------------------------------------

def slowest_step(per_rank: list[list[float]]) -> float:
    """Median over steps of the slowest rank's time."""
    return statistics.median(max(ts) for ts in zip(*per_rank))


def phase(per_rank: list[list[float]]) -> float:
    """Max over ranks of each rank's median."""
    return max(statistics.median(ts) for ts in per_rank)


def merge(results: list[dict], key: str) -> dict:
    """Concatenate the per-rank step lists of several repeats: {variant: {phase: [[rank0 steps], ...]}}."""
    out: dict = {}
    for res in results:
        for variant, phases in res[key].items():
            slot = out.setdefault(variant, {})
            if isinstance(phases, dict):
                for ph, per_rank in phases.items():
                    cur = slot.setdefault(ph, [[] for _ in per_rank])
                    for r, ts in enumerate(per_rank):
                        cur[r].extend(ts)
            else:
                cur = out[variant] if out[variant] else [[] for _ in phases]
                for r, ts in enumerate(phases):
                    cur[r].extend(ts)
                out[variant] = cur
    return out


def summarize_distbp(results: list[dict], ranks: int, threads: int) -> dict:
    times = merge(results, "times")
    rows = {}
    for variant, ph in times.items():
        batch, mode = variant.split(":")
        step = slowest_step(ph["step"])
        workers = 1 if mode == "solo" else ranks  # solo: rank 0 alone
        rows[variant] = {"per_rank_batch": int(batch), "global_batch": int(batch) * workers, "mode": mode,
                         "step_s": step, "samples_per_s": int(batch) * workers / step,
                         **{f"{k}_s": phase(ph[k]) for k in ("compute", "hooks", "exposed", "other")},
                         "steps_timed": len(ph["step"][0])}
    last = results[-1]
    theory = last["theory"]["total"]
    # increments are taken within each job (its own baseline) and then the worst job is kept: the baseline RSS
    # of a fresh process varies by several MB from launch to launch, so mixing jobs would invent or hide memory
    def worst(key: str, base: str = "baseline_rss") -> list[float]:
        return [max(r[key][k] - r[base][k] for r in results) for k in range(ranks)]

    peaks = [max(r["peak_rss"][k] for r in results) for k in range(ranks)]
    bases = [min(r["baseline_rss"][k] for r in results) for k in range(ranks)]
    increments = worst("peak_rss")
    # RSS after one step without communication: what the model itself touched; the rest of the peak came later
    models = worst("model_rss")
    trains = worst("overlap_peak_rss")
    memory = {"peak_bytes": peaks, "baseline_bytes": bases, "theory_bytes": theory, "theory_parts": last["theory"],
              "increment_bytes": increments,
              "model_increment_bytes": models,
              "after_comm_bytes": worst("peak_rss", "model_rss"),
              "increment_over_theory": max(increments) / theory,
              "overlap_increment_bytes": trains,
              "overlap_increment_over_theory": max(trains) / theory,
              "peak_over_theory": max(peaks) / theory}
    return {"ranks": ranks, "threads": threads, "variants": rows, "memory": memory, "buckets": last["buckets"],
            "model_memory_bytes": last.get("model_memory_bytes"),
            "blas_threads": last["blas_threads"]}


def summarize_torch(results: list[dict], ranks: int) -> dict:
    times = merge(results, "times")
    return {"variants": {int(b): {"step_s": slowest_step(pr), "samples_per_s": int(b) * ranks / slowest_step(pr)}
                         for b, pr in times.items()},
            "peak_bytes": [max(r["peak_rss"][k] for r in results) for k in range(ranks)],
            "torch": results[-1]["torch"]}


# ---- the tables -----------------------------------------------------------------------------------

def scaling_rows(d: dict, kind: str, G: int, P: int, cores: int) -> list[dict]:
    """One row per split for strong (global batch G) or weak (per-rank batch P) scaling, overlapped reducer."""
    job_1x1 = d[(1, 1)]["variants"]
    rows = []
    for (r, t), s in d.items():
        batch = (G // r) if kind == "strong" else P
        v = s["variants"].get(f"{batch}:overlap")
        if v is None:
            continue
        # the base: rank 0 alone on 1 thread in turns inside this same job (same load), else the 1x1 job
        solo = s["variants"].get(f"{G if kind == 'strong' else P}:solo")
        base = solo or job_1x1[f"{G if kind == 'strong' else P}:overlap"]
        separate = job_1x1[f"{G if kind == 'strong' else P}:overlap"]
        if kind == "strong":
            speedup, speedup_sep = base["step_s"] / v["step_s"], separate["step_s"] / v["step_s"]
        else:
            speedup = v["samples_per_s"] / (base["samples_per_s"])
            speedup_sep = v["samples_per_s"] / separate["samples_per_s"]
        row = {"kind": kind, "ranks": r, "threads": t, **v, "speedup": speedup, "efficiency": speedup / (r * t),
               "base": "in-job solo" if solo else "1x1 job", "base_step_s": base["step_s"],
               "efficiency_vs_1x1_job": speedup_sep / (r * t), "exposed_fraction": v["exposed_s"] / v["step_s"]}
        blocking = s["variants"].get(f"{batch}:blocking")
        if blocking is not None:
            row["blocking_step_s"] = blocking["step_s"]
            row["blocking_exposed_s"] = blocking["exposed_s"]
            row["hidden_fraction"] = (1 - v["exposed_s"] / blocking["exposed_s"]) if blocking["exposed_s"] > 0 else None
        nocomm = s["variants"].get(f"{batch}:nocomm")
        if nocomm is not None:  # the same steps on every rank at once, no communication: the machine's ceiling
            row["nocomm_step_s"] = nocomm["step_s"]
            row["ceiling_efficiency"] = row["efficiency"] * v["step_s"] / nocomm["step_s"]
        mpi = s["variants"].get(f"{batch}:overlap-mpi")
        if mpi is not None:  # the same buckets through MPI's Iallreduce instead of distbp's transport
            row["mpi_step_s"], row["mpi_exposed_s"] = mpi["step_s"], mpi["exposed_s"]
            row["speedup_vs_mpi"] = mpi["step_s"] / v["step_s"]
        ring = s["variants"].get(f"{batch}:overlap-ring")
        if ring is not None:  # the same buckets through distbp's ring
            row["ring_step_s"], row["ring_exposed_s"] = ring["step_s"], ring["exposed_s"]
            row["speedup_vs_ring"] = ring["step_s"] / v["step_s"]
            if nocomm is not None:
                row["ring_efficiency"] = row["efficiency"] * v["step_s"] / ring["step_s"]
        rows.append(row)
    return rows


def add_torch(rows: list[dict], torch: dict, cores: int) -> None:
    """Torch at the same split and batch (DDP for ranks > 1, plain for 1 rank) and plain PyTorch on all cores."""
    for row in rows:
        same = torch.get((row["ranks"], row["threads"]), {}).get("variants", {}).get(row["per_rank_batch"])
        if same:
            row["torch_samples_per_s"] = same["samples_per_s"]
            row["vs_torch_same_split"] = row["samples_per_s"] / same["samples_per_s"]
        allc = torch.get((1, cores), {}).get("variants", {}).get(row["global_batch"])
        if allc:
            row["torch_all_cores_samples_per_s"] = allc["samples_per_s"]
            row["vs_torch_all_cores"] = row["samples_per_s"] / allc["samples_per_s"]


def fmt(x, spec: str, none: str = "-") -> str:
    """format(x, spec), or `none` padded to the spec's width when x is None."""
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return none.rjust(width) if x is None else format(x, spec)


def print_scaling(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    print(f"{'ranks x thr':>11} {'batch/rank':>10} {'samples/s':>10} {'step ms':>8} {'speed-up':>8} {'eff':>6} "
          f"{'compute':>8} {'hooks':>6} {'exposed':>8} {'other':>6} {'exp %':>6} {'block ms':>9} {'block exp':>9} "
          f"{'hidden':>7} {'vs torch':>9} {'vs torch all':>12} {'base ms':>8} {'eff 1x1 job':>11}")
    for r in rows:
        ms = lambda k: fmt(1e3 * r[k] if r.get(k) is not None else None, "8.1f")
        print(f"{r['ranks']:>7} x {r['threads']:<3}{r['per_rank_batch']:>10} {r['samples_per_s']:10.0f} "
              f"{1e3 * r['step_s']:8.1f} {r['speedup']:8.2f} {r['efficiency']:6.1%} {ms('compute_s')} "
              f"{1e3 * r['hooks_s']:6.1f} {ms('exposed_s')} {1e3 * r['other_s']:6.1f} {r['exposed_fraction']:6.1%} "
              f"{fmt(1e3 * r['blocking_step_s'] if 'blocking_step_s' in r else None, '9.1f')} "
              f"{fmt(r['blocking_exposed_s'] * 1e3 if 'blocking_exposed_s' in r else None, '9.1f')} "
              f"{fmt(r.get('hidden_fraction'), '7.1%')} {fmt(r.get('vs_torch_same_split'), '9.2f')} "
              f"{fmt(r.get('vs_torch_all_cores'), '12.2f')} {1e3 * r['base_step_s']:8.1f} "
              f"{r['efficiency_vs_1x1_job']:11.1%}")
    for r in rows:
        for other, name in (("mpi", "MPI Iallreduce"), ("ring", "distbp's ring")):
            if f"{other}_step_s" in r:
                print(f"{r['ranks']:>7} x {r['threads']:<3} vs {name} (the same buckets, overlapped): "
                      f"step {1e3 * r['step_s']:.1f} vs {1e3 * r[f'{other}_step_s']:.1f} ms "
                      f"({r[f'speedup_vs_{other}']:.3f}x), exposed {1e3 * r['exposed_s']:.2f} vs "
                      f"{1e3 * r[f'{other}_exposed_s']:.2f} ms")
        if "nocomm_step_s" in r:
            print(f"{r['ranks']:>7} x {r['threads']:<3} without any communication (all ranks computing at once): step "
                  f"{1e3 * r['nocomm_step_s']:.1f} ms, efficiency ceiling {r['ceiling_efficiency']:.1%} "
                  f"(vs {r['efficiency']:.1%} with the allreduce)")


def print_torch(torch: dict) -> None:
    print("\nPyTorch baselines (samples/s; DDP gloo for ranks > 1, one process without DDP for 1 rank)")
    for (r, t), s in torch.items():
        cells = "  ".join(f"batch/rank {b}: {v['samples_per_s']:.0f} ({1e3 * v['step_s']:.1f} ms)"
                          for b, v in sorted(s["variants"].items()))
        print(f"{r:>7} x {t:<3} {'DDP' if r > 1 else 'plain':>5}  {cells}  peak {max(s['peak_bytes']) / MB:.0f} MB")


def print_memory(d: dict, torch: dict) -> None:
    print("\nMemory per rank (MB; peak = ru_maxrss; increment = peak - RSS after imports and compilation)")
    print("  model = RSS after one step without communication - baseline; comm = peak - that (reducer, MPI buffers);\n"
          "  training = increment of a separate job that runs only the overlapped ring reducer at the per-rank\n"
          "  batch (what `distbp train` runs); 'with MPI Iallreduce' the same job with --allreduce mpi;\n"
          "  each job against its own baseline, the worst job shown")
    print(f"{'ranks x thr':>11} {'rows':>5} {'peak':>7} {'baseline':>9} {'increment':>10} {'model':>6} {'comm':>6} "
          f"{'theory':>7} {'incr/theory':>11} {'training/theory':>15} {'with MPI Iallreduce':>19} {'peak/theory':>11} "
          f"{'torch peak':>10}")
    for (r, t), s in d.items():
        m = s["memory"]
        k = max(range(r), key=lambda i: m["increment_bytes"][i])
        tp = torch.get((r, t), {}).get("peak_bytes")
        print(f"{r:>7} x {t:<3}{m['theory_parts']['gather_X_y'] // (784 * 4 + 8):>5} {m['peak_bytes'][k] / MB:7.1f} "
              f"{m['baseline_bytes'][k] / MB:9.1f} {m['increment_bytes'][k] / MB:10.1f} "
              f"{m['model_increment_bytes'][k] / MB:6.1f} {m['after_comm_bytes'][k] / MB:6.1f} {m['theory_bytes'] / MB:7.1f} "
              f"{m['increment_over_theory']:11.2f} {m['training_job_increment_over_theory']:15.2f} "
              f"{fmt(m.get('training_job_mpi_increment_over_theory'), '19.2f')} "
              f"{m['peak_over_theory']:11.2f} {fmt(tp and max(tp) / MB, '10.1f')}")
    parts = next(iter(d.values()))["memory"]["theory_parts"]
    print("  theory: " + ", ".join(f"{k} {v / MB:.2f}" for k, v in parts.items()))
    mm = next(iter(d.values())).get("model_memory_bytes")
    if mm:
        ours = parts["parameters"] + parts["gradients"] + parts["activations_z_a"] + parts["g_scratch"] + parts["row_loss"]
        theirs = mm["parameters"] + mm["gradients"] + mm["workspace"]
        print(f"  cross-check: MLP.memory_bytes(rows) parameters + gradients + workspace = {theirs / MB:.2f} MB, "
              f"the formula's same parts = {ours / MB:.2f} MB")


def targets(strong: list[dict], weak: list[dict], d: dict, cores: int) -> list[dict]:
    """The issue's targets, each with the measurement that decides it."""
    out = []
    w2 = [r for r in weak if r["ranks"] == 2 and r["threads"] == 1]
    if w2:
        row = {"target": "weak scaling 1->2 ranks efficiency >= 95%", "measured": w2[0]["efficiency"],
               "met": w2[0]["efficiency"] >= 0.95}
        if "ceiling_efficiency" in w2[0]:
            row["where"] = f"ceiling without communication {w2[0]['ceiling_efficiency']:.3f}"
        out.append(row)
    multi = [r for r in strong + weak if r["ranks"] > 1]
    if multi:
        worst = max(multi, key=lambda r: r["exposed_fraction"])
        out.append({"target": "exposed communication <= 10% of the step (worst multi-rank row)",
                    "measured": worst["exposed_fraction"], "met": worst["exposed_fraction"] <= 0.10,
                    "where": f"{worst['kind']} {worst['ranks']}x{worst['threads']}"})
    allc = [r for r in strong if r["ranks"] * r["threads"] == cores and "vs_torch_all_cores" in r]
    if allc:
        best = max(allc, key=lambda r: r["vs_torch_all_cores"])
        out.append({"target": ">= 1.15x PyTorch on all cores (strong, best all-cores split)",
                    "measured": best["vs_torch_all_cores"], "met": best["vs_torch_all_cores"] >= 1.15,
                    "where": f"{best['ranks']}x{best['threads']}"})
    ddp = [r for r in strong + weak if r["ranks"] > 1 and "vs_torch_same_split" in r]
    if ddp:
        worst = min(ddp, key=lambda r: r["vs_torch_same_split"])
        out.append({"target": ">= 1.3x DDP at the same ranks and global batch (worst multi-rank row)",
                    "measured": worst["vs_torch_same_split"], "met": worst["vs_torch_same_split"] >= 1.3,
                    "where": f"{worst['kind']} {worst['ranks']}x{worst['threads']}"})
    inc = max(s["memory"]["training_job_increment_over_theory"] for s in d.values())
    out.append({"target": "peak memory increment of training (a job running only what distbp train runs) "
                          "<= theory + 20%",
                "measured": inc, "met": inc <= 1.2})
    inc = max(s["memory"]["increment_over_theory"] for s in d.values())
    out.append({"target": "peak memory increment, whole benchmark job (+ blocking allreduce) <= theory + 20%",
                "measured": inc, "met": inc <= 1.2})
    peak = max(s["memory"]["peak_over_theory"] for s in d.values())
    out.append({"target": "peak memory (whole process) <= theory + 20%", "measured": peak, "met": peak <= 1.2})
    return out


def plot(strong: list[dict], weak: list[dict], path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for rows, style in ((strong, "o-"), (weak, "s--")):
        labels = [f"{r['ranks']}x{r['threads']}" for r in rows]
        axes[0].plot(labels, [r["speedup"] for r in rows], style, label=rows[0]["kind"] if rows else "")
        axes[1].plot(labels, [r["efficiency"] for r in rows], style, label=rows[0]["kind"] if rows else "")
    axes[0].set_ylabel("speed-up vs 1x1")
    axes[1].set_ylabel("efficiency")
    for ax in axes[:2]:
        ax.set_xlabel("ranks x threads")
        ax.legend()
    rows = strong + weak
    labels = [f"{r['kind'][0]} {r['ranks']}x{r['threads']}" for r in rows]
    bottom = [0.0] * len(rows)
    for k in ("compute_s", "hooks_s", "exposed_s", "other_s"):
        vals = [1e3 * r[k] for r in rows]
        axes[2].bar(labels, vals, bottom=bottom, label=k[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[2].set_ylabel("ms per step (max over ranks)")
    axes[2].legend()
    fig.suptitle("distbp MLP 784-1024-1024-10 float32, measured")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv=None) -> None:
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 3)[3])
    p.add_argument("--max-ranks", type=int, default=cores, help="largest rank count (default: cores)")
    p.add_argument("--global-batch", type=int, default=512, help="strong scaling: fixed global batch")
    p.add_argument("--rank-batch", type=int, default=512, help="weak scaling: fixed batch per rank")
    p.add_argument("--repeats", type=int, default=2, help="times the whole sequence of jobs runs (A, B, A, B)")
    p.add_argument("--quick", action="store_true", help="fewer steps and one repeat (< 1 minute)")
    p.add_argument("--allreduce", default="hier", choices=["hier", "ring", "mpi"],
                   help="distbp's transport (default hier, what `distbp train` takes on one node); the same buckets "
                        "through MPI's Iallreduce and distbp's ring are timed beside it")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    p.add_argument("--out", default="results/scaling.json")
    p.add_argument("--plot", help="PNG of speed-up, efficiency and the step time split (needs matplotlib)")
    args = p.parse_args(argv)
    G, P = args.global_batch, args.rank_batch
    steps = dict(warmup=1, rounds=2, steps=3) if args.quick else dict(warmup=2, rounds=3, steps=4)
    repeats = 1 if args.quick else args.repeats
    use_torch = not args.no_torch and torch_available()
    plan = splits(cores, args.max_ranks)
    load0 = os.getloadavg()
    print(f"scaling: {cores} cores, splits {', '.join(f'{r}x{t}' for r, t in plan)}, {repeats} repeat(s), "
          f"load average {load0[0]:.1f}", file=sys.stderr)

    raw_d: dict = {s: [] for s in plan}
    raw_t: dict = {}
    raw_m: dict = {}
    raw_mm: dict = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for r, t in plan:
                batches = sorted({G // r, P} | ({G} if r == 1 else set()))
                modes = f"overlap,blocking,overlap-mpi,{'overlap-ring,' if args.allreduce != 'ring' else ''}nocomm" \
                    if r > 1 else "overlap"
                solo = sorted({G, P}) if (r, t) != (1, 1) else []  # the 1x1 base, again inside this job
                raw_d[(r, t)].append(run_distbp(r, t, batches, modes, solo, steps, Path(tmp, f"d{r}x{t}.{rep}.json"),
                                                args.allreduce))
                # memory of training alone: one job with one reducer, as `distbp train` runs it
                raw_m.setdefault((r, t), []).append(
                    run_distbp(r, t, [P], "overlap", [], steps, Path(tmp, f"m{r}x{t}.{rep}.json"), args.allreduce))
                if r > 1:  # the same with MPI's Iallreduce, the baseline of the ring's memory
                    raw_mm.setdefault((r, t), []).append(
                        run_distbp(r, t, [P], "overlap", [], steps, Path(tmp, f"mm{r}x{t}.{rep}.json"), "mpi"))
                if not use_torch:
                    continue
                tb = set(batches)
                if (r, t) == (1, cores):  # plain PyTorch on all cores at every global batch distbp runs
                    tb |= {G} | {rr * P for rr, _ in plan}
                raw_t.setdefault((r, t), []).append(
                    run_torch(r, t, sorted(tb), r == 1, steps, Path(tmp, f"t{r}x{t}.{rep}.json")))
    elapsed = time.perf_counter() - t_start
    d = {s: summarize_distbp(res, *s) for s, res in raw_d.items()}
    for s, res in raw_m.items():
        m = summarize_distbp(res, *s)["memory"]
        d[s]["memory"]["training_job_increment_bytes"] = m["overlap_increment_bytes"]
        d[s]["memory"]["training_job_increment_over_theory"] = m["overlap_increment_over_theory"]
    for s, res in raw_mm.items():
        m = summarize_distbp(res, *s)["memory"]
        d[s]["memory"]["training_job_mpi_increment_over_theory"] = m["overlap_increment_over_theory"]
    torch = {s: summarize_torch(res, s[0]) for s, res in raw_t.items()}
    strong, weak = scaling_rows(d, "strong", G, P, cores), scaling_rows(d, "weak", G, P, cores)
    add_torch(strong, torch, cores)
    add_torch(weak, torch, cores)
    goals = targets(strong, weak, d, cores)

    load1 = os.getloadavg()
    print(f"MEASURED on {platform.node()}: MLP {LAYERS} float32 sigmoid, {cores} cores, {repeats} repeat(s) x "
          f"{steps['rounds']} rounds x {steps['steps']} steps per variant; load average {load0[0]:.1f} -> "
          f"{load1[0]:.1f} (shared machine); {elapsed:.0f} s")
    print(__doc__.split("\n\n", 3)[3].rstrip())
    print_scaling(strong, f"STRONG scaling, global batch {G} (overlapped {args.allreduce} buckets; block = the same after backward; "
                          "allreduce; times in ms, max over ranks)")
    print_scaling(weak, f"WEAK scaling, {P} rows per rank")
    if torch:
        print_torch(torch)
    else:
        print("\nPyTorch not importable (or --no-torch): no DDP / PyTorch baselines")
    print_memory(d, torch)
    print("\nTargets")
    for g in goals:
        where = f" ({g['where']})" if "where" in g else ""
        print(f"  {'MET   ' if g['met'] else 'MISSED'} {g['target']}: measured {g['measured']:.3f}{where}")

    result = {"host": platform.node(), "cores": cores, "layers": LAYERS, "global_batch": G, "rank_batch": P,
              "steps": steps, "repeats": repeats, "load_average": [load0, load1], "elapsed_s": elapsed,
              "strong": strong, "weak": weak, "targets": goals,
              "distbp": {f"{r}x{t}": s for (r, t), s in d.items()},
              "torch": {f"{r}x{t}": {**s, "variants": {str(b): v for b, v in s["variants"].items()}}
                        for (r, t), s in torch.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nresults written to {args.out}")
    if args.plot:
        plot(strong, weak, args.plot)


if __name__ == "__main__":
    main()
