"""A step on one thread against all cores, from small models to large: where a second thread stops paying.

    .venv/bin/python benchmarks/threads.py

Each case is one training step (loss_and_grad_into + an Adam update) of a relu network in float32, timed on
1 thread and on every core in turns (median of --repeats rounds). The last column is what distbp now picks when
nobody asks for a thread count (host/threads.step_threads: one thread below SMALL_STEP_FLOPS, about 6 operations
per parameter and row).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: the thread pools' waits before numpy loads)
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from distbp.host.threads import cores_available, set_threads, step_threads  # noqa: E402
from distbp.nn.model import MLP  # noqa: E402
from distbp.nn.optim import make_optimizer  # noqa: E402

CASES = [([64, 128, 10], 32), ([64, 128, 10], 128), ([64, 256, 256, 10], 128), ([784, 256, 10], 128),
         ([784, 256, 10], 512), ([784, 1024, 1024, 10], 512)]


def seconds_per_step(model, X, y, grad, opt, threads: int, budget_s: float = 0.3) -> float:
    set_threads(threads)
    for _ in range(3):
        model.loss_and_grad_into(X, y, grad, validate=False)
        opt.step(model.flat_params, grad, 1.0 / len(X))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget_s or n < 5:
        model.loss_and_grad_into(X, y, grad, validate=False)
        opt.step(model.flat_params, grad, 1.0 / len(X))
        n += 1
    return (time.perf_counter() - t0) / n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/threads.json")
    args = p.parse_args(argv)
    cores = cores_available()
    rows = []
    for sizes, batch in CASES:
        model = MLP(sizes, activation="relu", dtype="float32", seed=0)
        rng = np.random.default_rng(0)
        X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        grad = np.zeros(model.n_params, np.float32)
        opt = make_optimizer("adam", model.n_params, np.float32, lr=1e-3)
        times = {1: [], cores: []}
        for _ in range(args.repeats):  # in turns, so load falls on both alike
            for t in times:
                times[t].append(seconds_per_step(model, X, y, grad, opt, t))
        one, many = statistics.median(times[1]), statistics.median(times[cores])
        rows.append({"model": "-".join(map(str, sizes)), "batch": batch, "mflop": 6 * model.n_params * batch / 1e6,
                     "us_1_thread": 1e6 * one, f"us_{cores}_threads": 1e6 * many, "ratio": many / one,
                     "picked": step_threads(cores, model.n_params, batch)})
    print_table([{"model": r["model"], "batch": r["batch"], "MFLOP": f"{r['mflop']:.1f}",
                  "1 thread µs": f"{r['us_1_thread']:.0f}", f"{cores} threads µs": f"{r[f'us_{cores}_threads']:.0f}",
                  f"{cores} / 1": f"{r['ratio']:.2f}", "default picks": r["picked"]} for r in rows],
                ["model", "batch", "MFLOP", "1 thread µs", f"{cores} threads µs", f"{cores} / 1", "default picks"],
                title=f"one step (relu, float32, adam), {cores} cores, median of {args.repeats}")
    write_json(args.out, {"benchmark": "threads", "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
