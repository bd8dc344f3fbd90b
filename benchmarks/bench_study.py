"""The scaling study of docs/cluster.md ("Run a scaling study"): `distbp bench scaling` on namespace hosts (as root).

    sudo .venv/bin/python benchmarks/bench_study.py                          # ~10 minutes on 2 cores
    sudo .venv/bin/python benchmarks/bench_study.py --layouts 4x1 --rounds 2 --before 7d08ac5
    sudo .venv/bin/python benchmarks/bench_study.py --analyse results/bench_study.json   # the figures again

For each layout (hosts x ranks per host, tests/helpers/netns.py: ranks of a host share memory, hosts talk TCP over
veth links) and each transport it runs one job of

    distbp bench scaling --mode both --allreduce T   (MLP --layers, relu, momentum, --per-rank-batch rows per rank)

for T = mpi (the MPI library's Iallreduce), hier (this checkout) and hier-before (the same command with
distbp/comm/hier.py taken from git revision --before: by default a5aea0c, whose hier sent every bucket through the
node's flags and Bruck's allreduce; 7d08ac5's summed across hosts by distbp's ring; the rest of the checkout is
this one, in a temporary copy). The jobs run in --rounds rounds (a, b,
c, a, b, c, …) so that load on a shared machine hits every transport alike; per size it keeps the median over the
rounds of the step time and, apart, of the efficiency each job measured against its own 1-rank step. It writes
the JSON of every job into --out, the comparison (a row per layout: weak and strong step time and efficiency) to docs/perf/bench_compare[_TAG].png and the full study of `hier` on the first layout to
docs/perf/bench_scaling[_TAG]_<layout>.png. Only the figures' machine state (the load average before and after)
tells whether the machine was quiet: on the development VM other jobs shared the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "helpers"))

TRANSPORTS = ("mpi", "hier-before", "hier")
# the hier to compare with: 7d08ac5 summed across nodes by distbp's ring, a5aea0c by Bruck's allreduce for every
# bucket (before small buckets crossed whole by MPI's Iallreduce, and one-rank nodes skipped the node's flags)
BEFORE = "a5aea0c"


def log(msg: str) -> None:
    print(f"bench_study: {msg}", file=sys.stderr, flush=True)


def before_tree(ref: str, into: Path) -> Path:
    """A copy of this checkout's distbp/ with distbp/comm/hier.py from git revision `ref` (read with git show)."""
    shutil.copytree(REPO / "distbp", into / "distbp", ignore=shutil.ignore_patterns("__pycache__"))
    old = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:distbp/comm/hier.py"], capture_output=True,
                         text=True, check=True).stdout
    if "SMALL_BUCKET_BYTES" not in old:
        # a hier from before the small buckets' route: this checkout's transports name the constant, and 0
        # says what that hier did (no bucket crossed nodes whole)
        old += "\n\nSMALL_BUCKET_BYTES = 0  # added by benchmarks/bench_study.py: no small buckets' route\n"
    (into / "distbp" / "comm" / "hier.py").write_text(old)
    return into


def study(cluster, per_host: int, transport: str, args, out: Path, cwd: Path) -> dict:
    allreduce = "hier" if transport.startswith("hier") else transport
    command = ["python", "-m", "distbp.bench", "scaling", "--mode", "both", "--allreduce", allreduce,
               "--data", f"synthetic:rows={args.rows}", "--layers", args.layers, "--activation", "relu",
               "--optimizer", "momentum", "--lr", "0.01", "--per-rank-batch", str(args.per_rank_batch),
               "--bucket-mb", str(args.bucket_mb),
               "--steps", str(args.steps), "--repeats", str(args.repeats), "--json", str(out)]
    done = cluster.run(command, ranks_per_host=per_host, timeout=1800, cwd=cwd)
    if done.returncode != 0:
        sys.exit(f"bench_study: {transport} failed\n{done.output}")
    return json.loads(out.read_text())


def median_round(docs: list[dict]) -> dict:
    """One document for several rounds of a job: per (mode, size) the median over the rounds of the step time and,
    separately, of the efficiency each round measured against its own 1-rank step (the sizes of one job take
    turns, so this ratio holds up on a loaded machine where the step times of separate jobs drift)."""
    doc = json.loads(json.dumps(docs[0]))
    for i, row in enumerate(doc["results"]):
        for key in ("step_s", "samples_per_s", "efficiency", "speedup", "exposed_share", "efficiency_vs_node"):
            values = [d["results"][i][key] for d in docs if d["results"][i].get(key) is not None]
            row[key] = statistics.median(values) if values else None
    doc["rounds"] = len(docs)
    return doc


def figures(results: dict, first: str, tag: str = "") -> list[str]:
    """The comparison of every layout (one figure) and the full study of hier on the first; the paths written."""
    from distbp.bench.plot import compare, plot_study

    doc = next(iter(results[first].values()))
    m, layers = doc["machine"], "-".join(map(str, doc["config"]["layers"]))
    name = f"_{tag}" if tag else ""
    path = REPO / "docs" / "perf" / f"bench_compare{name}.png"
    compare(results, str(path), title=f"distbp bench scaling on namespace hosts (hosts x ranks) of {m['host']}, "
                                      f"{m['cpu']}, {m['mpi']}: MLP {layers} {doc['config']['dtype']}, "
                                      f"{doc['per_rank_batch']} rows per rank (weak), global batch "
                                      f"{doc['global_batch']} (strong); median of {doc.get('rounds', 1)} round(s)")
    study = REPO / "docs" / "perf" / f"bench_scaling{name}_{first}.png"
    plot_study(results[first]["hier"], str(study))
    return [str(path), str(study)]


def summary(results: dict) -> None:
    for layout, by_transport in results.items():
        for mode in ("weak", "strong"):
            print(f"\n{layout} {mode}: step ms (efficiency) per ranks")
            for name, doc in by_transport.items():
                cells = "  ".join(f"{r['ranks']}: {1e3 * r['step_s']:.1f} ({100 * r['efficiency']:.0f} %)"
                                  for r in doc["results"] if r["mode"] == mode)
                print(f"  {name:>12}  {cells}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--layouts", default="4x1,2x2", help="hosts x ranks per host, comma-separated")
    p.add_argument("--transports", default=",".join(TRANSPORTS))
    p.add_argument("--before", default=BEFORE, help="git revision of the hier to compare with")
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--bucket-mb", type=float, default=4.0, help="the gradient's buckets (MiB)")
    p.add_argument("--tag", default="", help="added to the figures' names (e.g. small)")
    p.add_argument("--rows", type=int, default=8192, help="synthetic training rows (each rank draws them)")
    p.add_argument("--per-rank-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1, help="times every job runs, in turns (median round kept)")
    p.add_argument("--out", default="results/bench_study.json")
    p.add_argument("--analyse", help="draw the figures of a saved --out again (no namespaces)")
    args = p.parse_args(argv)
    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        saved["results"] = {layout: {t: median_round(docs) for t, docs in by.items()}
                            for layout, by in saved["rounds"].items()}
        summary(saved["results"])
        for path in figures(saved["results"], next(iter(saved["results"])), saved["args"].get("tag", "")):
            log(f"wrote {path}")
        return 0

    import netns

    reason = netns.unavailable_reason()
    if reason:
        log(f"cannot run: {reason}")
        return 2
    layouts = args.layouts.split(",")
    transports = args.transports.split(",")
    runs: dict = {layout: {t: [] for t in transports} for layout in layouts}
    load = [os.getloadavg()[0]]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        old = before_tree(args.before, Path(tmp) / "before") if "hier-before" in transports else None
        for layout in layouts:
            hosts, per_host = (int(x) for x in layout.split("x"))
            with netns.Cluster(hosts) as cluster:
                for r in range(args.rounds):
                    for t in transports:
                        t0 = time.monotonic()
                        out = Path(tmp) / f"{layout}-{t}-{r}.json"
                        runs[layout][t].append(study(cluster, per_host, t, args, out,
                                                     old if t == "hier-before" else REPO))
                        log(f"{layout} {t} round {r + 1}: {time.monotonic() - t0:.0f} s")
    load.append(os.getloadavg()[0])
    results = {layout: {t: median_round(docs) for t, docs in by.items()} for layout, by in runs.items()}
    summary(results)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "load_average": load,
                                          "elapsed_s": time.monotonic() - started, "results": results,
                                          "rounds": runs}, indent=1))
    log(f"wrote {args.out}; load average {load[0]:.1f} -> {load[1]:.1f}; {time.monotonic() - started:.0f} s")
    for path in figures(results, layouts[0], args.tag):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
