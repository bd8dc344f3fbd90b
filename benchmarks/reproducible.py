"""What --reproducible costs: samples/s of the default and the reproducible mode, side by side in the same job.

    python benchmarks/reproducible.py                      # 1 and 2 ranks, micro-batch 32 and 64
    python benchmarks/reproducible.py --ranks 1,2,4 --micro-batches 16,32,64 --out results/reproducible.json

Plain python: for each rank count it starts one MPI job (launch/local, this file with --worker) and repeats the
sequence --repeats times. Inside a job every variant is a real distbp run (train.setup on a synthetic dataset
through Config) and is timed with train.train_step, the trainer's own step (gather, backward, allreduce,
update); variants take turns in rounds so that machine load hits them alike. The default mode uses the
launcher's threads per rank (cores / ranks) and the overlapped bucketed allreduce; --reproducible runs one
thread per rank (a block must give the same bits wherever it runs), fixed micro-blocks and an exact int64
allreduce. Step time = per step the slowest rank, median over steps; ratio = reproducible / default samples/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One MPI job: time default and reproducible variants in turns; rank 0 writes JSON."""
    from distbp.host import threads

    threads.pin_threads_env(threads.default_threads())
    import numpy as np

    from distbp.comm.mpi import world
    from distbp.config import Config
    from distbp.train import loop
    from distbp.train.setup import setup

    comm = world()
    n_threads = threads.default_threads()
    layers = [int(s) for s in args.layers.split(",")]
    common = dict(data=f"synthetic:rows={args.rows},features={layers[0]},classes={layers[-1]},test=64",
                  layers=layers, batch_size=args.batch, lr=1e-4, epochs=1, progress="none", check_every=0)
    variants = {"default": dict(threads=n_threads)}
    for mb in args.micro_batches:
        variants[f"reproducible mb {mb}"] = dict(reproducible=True, micro_batch=mb, threads=1)
    runs = {}
    for name, options in variants.items():
        cfg = Config(**common, **options)
        runs[name] = setup(cfg, comm)
    starts = list(range(0, args.rows - args.batch + 1, args.batch))
    perm = np.arange(args.rows, dtype=np.int64)
    times = {name: [] for name in runs}

    def steps(name: str, count: int, record: bool) -> None:
        run = runs[name]
        threads.set_threads(run.cfg.threads)  # reproducible setup pins 1 thread; the default mode gets its own back
        for i in range(count):
            start = starts[(run.pos.step + i) % len(starts)]
            r0, r1 = run.sync.my_rows(args.batch)
            t0 = time.perf_counter()
            loop.train_step(run, perm[start + r0:start + r1], args.batch)
            if record:
                times[name].append(time.perf_counter() - t0)
        run.pos.step += count

    for name in runs:
        steps(name, args.warmup, record=False)
    for _ in range(args.rounds):
        for name in runs:
            comm.barrier()
            steps(name, args.steps, record=True)
    for run in runs.values():
        run.watchdog.stop()
    # [dist] every rank's step times, summed into a zero-padded (ranks, steps) table
    table = {}
    for name, ts in times.items():
        buf = np.zeros((comm.size, len(ts)))
        buf[comm.rank] = ts
        comm.allreduce_sum(buf)
        table[name] = buf.tolist()
    if comm.is_root:
        Path(args.out).write_text(json.dumps({"ranks": comm.size, "threads_default": n_threads,
                                              "threads": {n: r.cfg.threads for n, r in runs.items()},
                                              "times": table}))


def slowest_median(per_rank: list[list[float]]) -> float:
    """Median over steps of the slowest rank's step time."""
    import statistics
    return statistics.median(max(ts) for ts in zip(*per_rank))


def driver(args) -> None:
    from benchmarks.common import machine, print_table, write_json

    ranks = [int(r) for r in args.ranks.split(",")]
    raw: dict[int, list[dict]] = {r: [] for r in ranks}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for r in ranks:
                out = Path(tmp, f"r{r}.{rep}.json")
                cmd = [sys.executable, str(REPO / "launch" / "local"), "-n", str(r), "python", __file__, "--worker",
                       "--out", str(out), "--layers", args.layers, "--batch", str(args.batch), "--rows", str(args.rows),
                       "--micro-batches", ",".join(map(str, args.micro_batches)), "--warmup", str(args.warmup),
                       "--rounds", str(args.rounds), "--steps", str(args.steps)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"reproducible: {r}-rank job failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                print(f"  {r} rank(s): {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
                raw[r].append(json.loads(out.read_text()))
    rows = []
    for r, results in raw.items():
        merged: dict[str, list[list[float]]] = {}
        for res in results:
            for name, per_rank in res["times"].items():
                cur = merged.setdefault(name, [[] for _ in per_rank])
                for k, ts in enumerate(per_rank):
                    cur[k].extend(ts)
        base = None
        for name, per_rank in merged.items():
            step = slowest_median(per_rank)
            rate = args.batch / step
            base = rate if name == "default" else base
            rows.append({"ranks": r, "mode": name, "threads/rank": results[-1]["threads"][name],
                         "step ms": 1e3 * step, "samples/s": rate, "vs default": rate / base,
                         "steps": len(per_rank[0])})
    info = machine()
    print(f"MEASURED: MLP {args.layers} float32 sigmoid, global batch {args.batch}, synthetic data, "
          f"{args.repeats} repeat(s) x {args.rounds} rounds x {args.steps} steps per variant, load average "
          f"{info['load_average_1min']:.1f}, {time.perf_counter() - t_start:.0f} s")
    print("step = train.train_step (gather, backward, allreduce, update); per step the slowest rank, median; "
          "vs default = samples/s ratio at the same rank count\n")
    print_table(rows, ["ranks", "mode", "threads/rank", "step ms", "samples/s", "vs default", "steps"],
                title="--reproducible vs default")
    write_json(args.out, {"machine": info, "layers": args.layers, "global_batch": args.batch,
                          "micro_batches": args.micro_batches, "rows": rows})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="1,2", help="rank counts, comma-separated")
    p.add_argument("--layers", default="784,256,10")
    p.add_argument("--batch", type=int, default=512, help="global batch")
    p.add_argument("--micro-batches", default="32,64", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--rows", type=int, default=8192, help="synthetic training rows")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="times the sequence of jobs runs (A, B, A, B)")
    p.add_argument("--out", default="results/reproducible.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    worker(args) if args.worker else driver(args)


if __name__ == "__main__":
    main()
