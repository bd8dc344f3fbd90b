"""The update kernels side by side: each optimizer's step per parameter, as a multiple of momentum's.

    .venv/bin/python benchmarks/optimizers.py [--threads 1] [--repeats 30] [--json results/optimizers.json]

Every optimizer steps the same flat buffer (784-256-10's 203,530 parameters and 784-1024-1024-10's 1.86 M,
float32), all timed in turns (round-robin, median) so that load falls on each alike. LARS and LAMB take a
second pass for their layer norms; issue 31's target is LAMB at most 3x momentum per parameter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: the thread pools' waits before numpy loads)
from benchmarks.common import interleaved_medians, machine, print_table, write_json  # noqa: E402
from distbp.host.threads import set_threads  # noqa: E402
from distbp.nn.model import layer_slices_of  # noqa: E402
from distbp.nn.optim import make_optimizer, segments_of  # noqa: E402

MODELS = {"784-256-10": [784, 256, 10], "784-1024-1024-10": [784, 1024, 1024, 10]}
OPTIMIZERS = ("gd", "momentum", "adam", "lars", "lamb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", default="results/optimizers.json")
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for model, sizes in MODELS.items():
        n = layer_slices_of(sizes)[-1].stop
        rng = np.random.default_rng(0)
        params = {name: rng.standard_normal(n).astype(np.float32) for name in OPTIMIZERS}
        grad = (rng.standard_normal(n) * 0.01).astype(np.float32)
        steps = {}
        for name in OPTIMIZERS:
            opt = make_optimizer(name, n, np.float32, lr=1e-3, segments=segments_of(sizes))
            steps[name] = (lambda opt=opt, p=params[name]: opt.step(p, grad, 1.0))
        medians = interleaved_medians(steps, args.repeats, warmup=3)
        for name in OPTIMIZERS:
            rows.append({"model": model, "parameters": n, "optimizer": name, "ms": medians[name] * 1e3,
                         "ns_per_param": medians[name] * 1e9 / n, "x_momentum": medians[name] / medians["momentum"]})
    print_table(rows, ["model", "optimizer", "ms", "ns_per_param", "x_momentum"],
                f"optimizer steps, float32, {args.threads} thread(s), median of {args.repeats} in turns")
    write_json(args.json, {"machine": machine(), "threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
