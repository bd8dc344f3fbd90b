"""Small models at the step's bound: the bare step against `distbp.fit`'s and `distbp train`'s steady-state step.

    .venv/bin/python benchmarks/small_models.py                 # every case (about 15 minutes on 2 cores)
    .venv/bin/python benchmarks/small_models.py --quick         # without 784-1024-1024-10 (about 6 minutes)
    .venv/bin/python benchmarks/small_models.py --layouts 1x1 --dtypes float32 --repeats 5

Cases (issue 31): 64-128-10 at batch 32 (digits-sized: 64 features, 10 classes), 784-256-10 at batches 32 and
128, 784-1024-1024-10 at batch 512; relu, Adam, float32 and float64; layouts 1x1 and 1x2 (one process on 1 and on
2 threads) and 2x1 (2 ranks of 1 thread, `launch/local -n 2 --threads 1`). Data: the built-in synthetic set of the
case's shape, rows = batch × steps (every step a full batch), no held-out rows (--test-fraction 0: no evaluation),
the default feature scaling.

Each case is timed three ways, in turns (bare, fit, train; the cases one after another; --repeats such rounds; the
medians are reported), in µs per step:
  bare   model.loss_and_grad_into(X, y, grad, validate=False) + the Adam step on one fixed batch, as
         benchmarks/threads.py times it. On 2 ranks each rank computes its half of the batch and one blocking
         allreduce of the gradient (comm.allreduce_sum) comes before the step: the bare data-parallel step.
  fit    distbp.fit on the case's data for --epochs E: the time between the callbacks of consecutive epochs (an
         epoch callback reading time.perf_counter) over the epoch's steps, median over epochs 2…E. So all of fit's
         per-step and per-epoch work is in it, and none of its start-up (set-up, loading the kernels, the first
         epoch's first touches of its buffers).
  train  `distbp train --metrics`: each epoch's time_s over its steps, median over epochs 2…E (time_s covers the
         epoch's steps, not the record written at its end: the command line tells nothing finer from outside).
  python fit − bare: what fit's step spends beyond the bare step (gathering the rows, the strategy's and the
         instruments' calls, the verdict's sums, the per-epoch work spread over the steps).
The target (issue 31): fit/bare <= 1.05 in every case, python < 10 µs on 64-128-10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402  (first: the thread pools' waits before numpy loads)
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from distbp.data.shard import rank_slice  # noqa: E402
from distbp.host.threads import set_threads  # noqa: E402
from distbp.nn.model import MLP  # noqa: E402
from distbp.nn.optim import make_optimizer  # noqa: E402

LAUNCH = REPO / "launch" / "local"
PYTHON = sys.executable
# (layers, batch, steps per epoch): steps make an epoch of about 10-50 ms on one thread here
CASES = [((64, 128, 10), 32, 400), ((784, 256, 10), 32, 200), ((784, 256, 10), 128, 100),
         ((784, 1024, 1024, 10), 512, 8)]
LAYOUTS = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # name: (ranks, threads per rank)
LR = 1e-3


def data_spec(layers, batch: int, steps: int) -> str:
    return f"synthetic:rows={batch * steps},features={layers[0]},classes={layers[-1]}"


def options(batch: int, epochs: int, threads: int) -> dict:
    """distbp.fit's keywords for a case (the command line gets the same as flags)."""
    return {"epochs": epochs, "batch_size": batch, "optimizer": "adam", "lr": LR, "lr_scale": "mean",
            "test_fraction": 0.0, "threads": threads, "seed": 0}


# ---- the three timings ------------------------------------------------------------------------

def bare_step(layers, batch: int, dtype: str, comm=None, budget_s: float = 0.3) -> float:
    """Seconds of one bare step (see the module docstring); on several ranks each computes its share of the batch
    and the gradient is allreduced before the update (every rank runs the same number of steps)."""
    rank, size = (0, 1) if comm is None else (comm.rank, comm.size)
    model = MLP(list(layers), activation="relu", dtype=dtype, seed=0)
    r0, r1 = rank_slice(batch, rank, size)
    rng = np.random.default_rng(rank)
    X = rng.standard_normal((r1 - r0, layers[0])).astype(dtype)
    y = rng.integers(0, layers[-1], r1 - r0)
    grad = np.zeros(model.n_params, dtype)
    opt = make_optimizer("adam", model.n_params, dtype, lr=LR)

    def step():
        model.loss_and_grad_into(X, y, grad, validate=False)
        if comm is not None:
            comm.allreduce_sum(grad)
        opt.step(model.flat_params, grad, 1.0 / batch)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    guess = (time.perf_counter() - t0) / 3
    if comm is not None:
        guess = comm.max_scalar(guess)  # the same count on every rank: the allreduces pair up
    n = max(5, int(budget_s / max(guess, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def fit_step(layers, batch: int, steps: int, dtype: str, epochs: int, threads: int, comm=None) -> float:
    """Seconds per step of distbp.fit in its steady state: epoch callbacks' times, epochs 2…E (module docstring)."""
    stamps = []

    def at_epoch_end(record):
        stamps.append(time.perf_counter())

    model = MLP(list(layers), activation="relu", dtype=dtype, seed=0)
    distbp.fit(model, data=data_spec(layers, batch, steps), callback=at_epoch_end, verbose=False, comm=comm,
               **options(batch, epochs, threads))
    return statistics.median(np.diff(stamps) / steps)


def train_step(layers, batch: int, steps: int, dtype: str, epochs: int, ranks: int, threads: int) -> float:
    """Seconds per step of `distbp train` in its steady state: --metrics' time_s over the steps, epochs 2…E."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "metrics.jsonl")
        flags = ["--data", data_spec(layers, batch, steps), "--layers", ",".join(map(str, layers)),
                 "--activation", "relu", "--dtype", dtype, "--metrics", metrics]
        for key, value in options(batch, epochs, threads).items():
            flags += [f"--{key.replace('_', '-')}", str(value)]
        command = ([PYTHON, "-m", "distbp", "train"] if ranks == 1 else
                   [str(LAUNCH), "-n", str(ranks), "--threads", str(threads), "distbp", "train"])
        done = subprocess.run(command + flags, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        with open(metrics) as f:
            records = [json.loads(line) for line in f if line.strip()]
    epochs_done = [r for r in records if "eval_step" not in r]
    return statistics.median(r["time_s"] / steps for r in epochs_done[1:])


def ranks_round(layers, batch: int, steps: int, dtype: str, epochs: int, ranks: int, threads: int) -> dict:
    """bare and fit of one case on `ranks` ranks: one job of this script in --worker mode."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        case = json.dumps({"layers": list(layers), "batch": batch, "steps": steps, "dtype": dtype, "epochs": epochs,
                           "threads": threads, "out": out})
        command = [str(LAUNCH), "-n", str(ranks), "--threads", str(threads), PYTHON, __file__, "--worker", case]
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the {ranks}-rank worker failed ({done.returncode}):\n{done.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def worker(case: dict) -> None:
    """--worker: every rank runs the bare step and fit of one case; the root writes the seconds to case["out"]."""
    from distbp.comm.mpi import world

    comm = world()
    set_threads(case["threads"])
    layers, batch, steps, dtype = tuple(case["layers"]), case["batch"], case["steps"], case["dtype"]
    bare = comm.max_scalar(bare_step(layers, batch, dtype, comm))  # the slower rank's step
    fit = fit_step(layers, batch, steps, dtype, case["epochs"], case["threads"], comm)
    fit = comm.max_scalar(fit)
    if comm.rank == 0:
        with open(case["out"], "w") as f:
            json.dump({"bare": bare, "fit": fit}, f)


# ---- the table --------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="rounds of every case, timed in turns (medians)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per fit and train (the first is left out)")
    p.add_argument("--quick", action="store_true", help="leave out 784-1024-1024-10")
    p.add_argument("--layouts", default="1x1,1x2,2x1", help="of 1x1, 1x2 (threads), 2x1 (ranks)")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--out", default="results/small_models.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is start-up and left out")
    layouts = args.layouts.split(",")
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        p.error(f"--layouts: unknown {', '.join(unknown)} (choose from {', '.join(LAYOUTS)})")
    cases = [c for c in CASES if not (args.quick and len(c[0]) > 3)]
    keys = [(layers, batch, steps, dtype, layout) for layers, batch, steps in cases
            for dtype in args.dtypes.split(",") for layout in layouts]
    times = {key: {"bare": [], "fit": [], "train": []} for key in keys}
    load = [os.getloadavg()[0]]
    for r in range(args.repeats):
        for key in keys:
            layers, batch, steps, dtype, layout = key
            ranks, threads = LAYOUTS[layout]
            if ranks == 1:
                set_threads(threads)
                times[key]["bare"].append(bare_step(layers, batch, dtype))
                times[key]["fit"].append(fit_step(layers, batch, steps, dtype, args.epochs, threads))
            else:
                both = ranks_round(layers, batch, steps, dtype, args.epochs, ranks, threads)
                times[key]["bare"].append(both["bare"])
                times[key]["fit"].append(both["fit"])
            times[key]["train"].append(train_step(layers, batch, steps, dtype, args.epochs, ranks, threads))
        load.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.repeats} done (load {load[-1]:.2f})", flush=True)
    rows = []
    for key in keys:
        layers, batch, steps, dtype, layout = key
        us = {k: 1e6 * statistics.median(v) for k, v in times[key].items()}
        rows.append({"model": "-".join(map(str, layers)), "batch": batch, "dtype": dtype, "layout": layout,
                     "steps_per_epoch": steps, "bare_us": us["bare"], "fit_us": us["fit"], "train_us": us["train"],
                     "fit_over_bare": us["fit"] / us["bare"], "train_over_bare": us["train"] / us["bare"],
                     "python_us": us["fit"] - us["bare"],
                     "rounds_us": {k: [1e6 * t for t in v] for k, v in times[key].items()}})
    print_table([{"model": r["model"], "batch": r["batch"], "dtype": r["dtype"][5:], "layout": r["layout"],
                  "bare µs": f"{r['bare_us']:.1f}", "fit µs": f"{r['fit_us']:.1f}", "train µs": f"{r['train_us']:.1f}",
                  "fit/bare": f"{r['fit_over_bare']:.3f}", "train/bare": f"{r['train_over_bare']:.3f}",
                  "python µs": f"{r['python_us']:.1f}"} for r in rows],
                ["model", "batch", "dtype", "layout", "bare µs", "fit µs", "train µs", "fit/bare", "train/bare",
                 "python µs"],
                title=f"µs per step, relu, Adam; medians of {args.repeats} rounds in turns; layout ranks x threads; "
                      f"load {min(load):.2f}-{max(load):.2f}")
    write_json(args.out, {"benchmark": "small_models", "machine": machine(), "epochs": args.epochs,
                          "repeats": args.repeats, "load_average_1min": load, "results": rows})


if __name__ == "__main__":
    main()
