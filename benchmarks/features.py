"""Cost and benefit of --accumulate and --shard-optimizer (and --reproducible, --trace), side by side.

    .venv/bin/python benchmarks/features.py [--ranks 1,2] [--steps 20] [--variants plain,trace]
                                            [--out results/features.json] [--plot PNG]

Part 1 (model, no run): memory per rank against the rank count, with and without
sharded optimizer state, from distbp.train.memory (which tests check against the buffers
a run really allocates).
Part 2 (measured): median step time of each variant, interleaved round-robin in one
MPI job per rank count (launch/local), so load from elsewhere hits every variant
alike; ratios are against the plain run of the same job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = [784, 1024, 1024, 10]
VARIANTS = {
    "plain": {},
    "accumulate 4": {"accumulate": 4},
    "shard-optimizer": {"shard_optimizer": True},
    "reproducible": {"reproducible": True, "micro_batch": 64},
    # fewer, larger blocks: less per-block work (each block writes a whole dW and converts it to int64)
    "reproducible mb 128": {"reproducible": True, "micro_batch": 128},
    # every event of the step recorded and written to the rank's trace file after the step
    "trace": {"trace": "TRACE"},
}


def worker(args) -> None:
    """Runs on every rank: build one Run per variant, time train_step round-robin."""
    import numpy as np

    from distbp.comm.mpi import world
    from distbp.config import Config, validate
    from distbp.data.shard import epoch_permutation, global_batches
    from distbp.train import loop
    from distbp.train.setup import setup
    from tests.helpers import memcheck

    comm = world()
    runs = {}
    rows = args.batch * 4
    trace_dir = comm.allgather_object(tempfile.mkdtemp(prefix="distbp-features-") if comm.is_root else None)[0]
    for name in args.variants.split(","):
        extra = {k: (f"{trace_dir}/trace.json" if v == "TRACE" else v) for k, v in VARIANTS[name].items()}
        cfg = validate(Config(data=f"synthetic:rows={rows},features=784,classes=10,test=16", layers=LAYERS,
                              batch_size=args.batch, optimizer="adam", lr=1e-4, progress="none", timeout=0,
                              check_every=0, **extra))
        runs[name] = setup(cfg, comm)
    perm = epoch_permutation(next(iter(runs.values())).data.train.n_rows, 0, 0)
    start, stop = global_batches(len(perm), args.batch)[0]
    times = {name: [] for name in runs}
    for i in range(args.steps + 2):
        for name, run in runs.items():
            r0, r1 = run.sync.my_rows(stop - start)
            for _ in range(args.lead):  # untimed: the variant is timed in its own steady state, not in the wake
                loop.train_step(run, perm[start + r0:start + r1], stop - start)  # of another's thread pools
            comm.barrier()
            t0 = time.perf_counter()
            run.trace.at_step(i)  # as run_epoch does: writes the last step's events (nothing when untraced)
            with run.trace.span("step", step=i):
                loop.train_step(run, perm[start + r0:start + r1], stop - start)
            dt = comm.max_scalar(time.perf_counter() - t0)  # the slowest rank sets the step time
            if i >= 2:  # the first calls compile
                times[name].append(dt)
    for run in runs.values():
        run.watchdog.stop()
        run.trace.close_part()
    comm.barrier()
    if comm.is_root:
        shutil.rmtree(trace_dir, ignore_errors=True)
    if comm.is_root:
        out = {}
        for name, run in runs.items():
            allocated = memcheck.allocated_bytes(run, skip=(run.data, run.comm))
            out[name] = {"step_s": float(np.median(times[name])), "allocated_bytes": int(allocated)}
        print("RESULT " + json.dumps(out), flush=True)


def memory_table(batch: int) -> list[dict]:
    from tests.helpers import memcheck

    rows = []
    for p in (1, 2, 4, 8, 16, 64, 256, 1024):
        plain = memcheck.per_rank_bytes(LAYERS, "float32", batch * p, p, "adam", False)  # weak scaling: batch per rank
        shard = memcheck.per_rank_bytes(LAYERS, "float32", batch * p, p, "adam", True)
        rows.append({"ranks": p, "plain MiB": plain["total"] / 2**20, "sharded MiB": shard["total"] / 2**20,
                     "opt state plain MiB": plain["optimizer_state"] / 2**20,
                     "opt state sharded MiB": shard["optimizer_state"] / 2**20,
                     "saving": 1 - shard["total"] / plain["total"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--batch", type=int, default=512, help="global batch of the measured step")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--lead", type=int, default=1, help="untimed steps before each timed one (OpenBLAS's idle "
                                                        "threads spin ~0.1 s after a GEMM on 2 threads)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    ap.add_argument("--out", default="results/features.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    from common import machine, print_table, write_json

    mem = memory_table(args.batch)
    print_table(mem, list(mem[0]), "memory per rank, MLP 784-1024-1024-10 float32 adam, 512 rows per rank "
                                   "(model: distbp.train.memory)")
    measured = []
    for p in [int(x) for x in args.ranks.split(",")]:
        threads = max(1, len(os.sched_getaffinity(0)) // p)
        cmd = [sys.executable, str(ROOT / "launch/local"), "-n", str(p), "--threads", str(threads), "python",
               __file__, "--worker", "--batch", str(args.batch), "--steps", str(args.steps),
               "--lead", str(args.lead), "--variants", args.variants]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"worker failed on {p} ranks:\n{out.stdout}\n{out.stderr}")
        res = json.loads(line[7:])
        base = res["plain"]["step_s"] if "plain" in res else next(iter(res.values()))["step_s"]
        for name, r in res.items():
            measured.append({"ranks": p, "threads": threads, "variant": name, "step ms": 1e3 * r["step_s"],
                             "vs plain": r["step_s"] / base, "samples/s": args.batch / r["step_s"],
                             "allocated MiB": r["allocated_bytes"] / 2**20})
    print()
    print_table(measured, list(measured[0]), f"measured step, global batch {args.batch}, ratios within one job")
    write_json(args.out, {"machine": machine(), "memory_model": mem, "measured": measured})
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: no plot written")
            return
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["ranks"] for r in mem], [r["plain MiB"] for r in mem], "o-", label="optimizer state replicated")
        ax.plot([r["ranks"] for r in mem], [r["sharded MiB"] for r in mem], "s-", label="--shard-optimizer")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ranks")
        ax.set_ylabel("MiB per rank")
        ax.set_title("MLP 784-1024-1024-10, adam, 512 rows per rank")
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
