"""What --reproducible's micro-blocks cost: one thread's backward pass over 512 rows as one batch and as
blocks of 32…256 rows, with the int64 conversion each block adds, side by side in one process.

    .venv/bin/python benchmarks/blocks.py [--layers 784,1024,1024,10] [--repeats 7]

Every case runs on one thread (Numba and BLAS), as a lane of the exact strategy does; cases are
timed round-robin, so machine load falls on all of them alike. The ratio column is the case's time
for 512 rows over the one-batch time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".numba_cache"))

import numpy as np  # noqa: E402
from common import interleaved_medians, machine, print_table, write_json  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from distbp.host.threads import thread_setter  # noqa: E402
from distbp.nn.model import MLP  # noqa: E402
from distbp.sync.exact import add_fixed_point  # noqa: E402

ROWS = 512


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", default="784,1024,1024,10")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="results/blocks.json")
    args = p.parse_args()
    sizes = [int(s) for s in args.layers.split(",")]
    model = MLP(sizes, dtype="float32")
    thread_setter()(1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], ROWS)
    grad = np.empty(model.n_params, np.float32)
    acc = np.zeros(model.n_params, np.int64)
    cases = {}
    for block in (ROWS, 256, 128, 64, 32):
        ws = model.new_workspace(block)

        def backward(block=block, ws=ws):
            for s in range(0, ROWS, block):
                model.loss_and_grad_into(X[s:s + block], y[s:s + block], grad, validate=False, workspace=ws)
        cases[f"blocks of {block}"] = backward
    cases["one int64 conversion"] = lambda: add_fixed_point(acc, grad, 2.0 ** 20)
    med = interleaved_medians(cases, args.repeats, warmup=1)
    base = med[f"blocks of {ROWS}"]
    rows = [{"case": k, "ms": 1e3 * v, "vs one batch": v / base if k.startswith("blocks") else None}
            for k, v in med.items()]
    print_table(rows, ["case", "ms", "vs one batch"],
                f"backward over {ROWS} rows of MLP {args.layers}, float32, 1 thread; median of {args.repeats}, "
                f"load avg {os.getloadavg()[0]:.1f}")
    write_json(args.out, {"benchmark": "blocks", "layers": sizes, "rows": ROWS, "machine": machine(),
                          "median_s": med})


if __name__ == "__main__":
    main()
