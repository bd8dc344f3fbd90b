"""PyTorch baselines for benchmarks/scaling.py: DistributedDataParallel (gloo) and plain PyTorch, same MLP and steps.

    python benchmarks/ddp_worker.py --ranks 2 --threads 1 --batches 256,512 --out /tmp/ddp.json
    python benchmarks/ddp_worker.py --ranks 1 --threads 2 --plain --batches 512 --out /tmp/torch.json

Spawns --ranks processes (torch.multiprocessing, MASTER_ADDR=127.0.0.1), each with torch.set_num_threads(threads)
and pinned to its own cores when ranks x threads fit, like launch/local pins distbp's ranks. The model is
nn.Linear + nn.Sigmoid layers, CrossEntropyLoss(reduction='sum') and SGD, float32, on random data; the per-rank
batches in --batches take turns in rounds. --plain (one rank only) trains without DDP or a process group.
Writes the per-step times of every rank and every rank's ru_maxrss. PyTorch is only a baseline: distbp never
imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

LR = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(sizes: list[int]):
    import torch.nn as nn

    layers = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(fi, fo))
        if i < len(sizes) - 2:
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def run_rank(rank: int, args, tmpdir: str) -> None:
    """One process: set threads and affinity, build the (DDP) model, time the steps, write rank<r>.json."""
    cores = sorted(os.sched_getaffinity(0))
    if args.ranks * args.threads <= len(cores):
        os.sched_setaffinity(0, cores[rank * args.threads:(rank + 1) * args.threads])
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = [int(s) for s in args.layers.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    model = make_model(sizes)
    if not args.plain:
        dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
        model = torch.nn.parallel.DistributedDataParallel(model)  # [dist] gradient allreduce in backward
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(rank)
    X = torch.randn(max(batches), sizes[0], generator=gen)
    y = torch.randint(0, sizes[-1], (max(batches),), generator=gen)
    times = {b: [] for b in batches}

    def step(b: int) -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(X[:b]), y[:b])
        loss.backward()  # DDP allreduces gradient buckets while backward runs
        opt.step()
        return time.perf_counter() - t0

    for b in batches:
        for _ in range(args.warmup):
            step(b)
    for _ in range(args.rounds):
        for b in batches:
            if not args.plain:
                dist.barrier()
            times[b].extend(step(b) for _ in range(args.steps))
    out = {"rank": rank, "times": {str(b): t for b, t in times.items()},
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "torch": torch.__version__, "threads": torch.get_num_threads()}
    Path(tmpdir, f"rank{rank}.json").write_text(json.dumps(out))
    if not args.plain:
        dist.destroy_process_group()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plain", action="store_true", help="one process, no DDP (PyTorch on all its threads)")
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--batches", default="512", help="per-rank batch sizes, comma-separated")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.plain and args.ranks != 1:
        p.error("--plain runs one process: use --ranks 1")
    # set before torch loads in any process, so intra-op pools start with the right size
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    # the same pool waits distbp's processes get (distbp.host.threads.set_pool_waits: a short spin, then sleep);
    # libgomp's long default spin collapses when a shared machine deschedules a spinning worker
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "1000"
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "12")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    with tempfile.TemporaryDirectory() as tmpdir:
        if args.ranks == 1:
            run_rank(0, args, tmpdir)
        else:
            import torch.multiprocessing as mp
            mp.spawn(run_rank, args=(args, tmpdir), nprocs=args.ranks, join=True)
        per_rank = [json.loads(Path(tmpdir, f"rank{r}.json").read_text()) for r in range(args.ranks)]
    result = {"ranks": args.ranks, "threads": args.threads, "plain": args.plain, "layers": args.layers,
              "torch": per_rank[0]["torch"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "peak_rss": [r["peak_rss"] for r in per_rank],
              "times": {b: [r["times"][b] for r in per_rank] for b in per_rank[0]["times"]}}
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
