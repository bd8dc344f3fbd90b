"""Drawing the built-in synthetic dataset (every rank does it at start-up): distbp's draw against the
earlier one, side by side, the same bits.

    .venv/bin/python benchmarks/synthetic_data.py                 # the default 60000x784, 10 classes
    .venv/bin/python benchmarks/synthetic_data.py --rows 200000 --rounds 5

The earlier draw formed the product in row blocks of 2.6 MB (CHUNK_ELEMENTS) and added the noise from one
rows x features temporary; distbp's forms it in L2-sized blocks (PRODUCT_BLOCK_BYTES) and draws the noise
block by block into the rows (data.add_standard_normal). Both run in turns in one process; the table gives
medians and the ratio, and the script checks that both give the same X.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
import numpy as np  # noqa: E402

from benchmarks.common import machine, print_table, write_json  # noqa: E402
from distbp import data  # noqa: E402


def earlier_draw(rows: int, features: int, classes: int, seed: int = 0) -> np.ndarray:
    """X as data._synthetic drew it before: product blocks of CHUNK_ELEMENTS / 8 elements, one noise temporary."""
    latent, per_class = 24, 4
    rng = np.random.default_rng([seed, 20240])
    centres = rng.standard_normal((classes, per_class, latent), dtype=np.float32) * np.float32(1.2)
    basis = rng.standard_normal((latent, features), dtype=np.float32) / np.float32(np.sqrt(latent))
    y = rng.integers(0, classes, rows)
    z = centres[y, rng.integers(0, per_class, rows)]
    z += rng.standard_normal((rows, latent), dtype=np.float32)
    X = np.empty((rows, features), np.float32)
    block = max(1, data.CHUNK_ELEMENTS // (8 * features))
    tmp = np.empty((block, features), np.float32)
    for s in range(0, rows, block):
        o, t, zi = X[s:s + block], tmp[:min(block, rows - s)], z[s:s + block]
        np.multiply(zi[:, :1], basis[0], out=o)
        for k in range(1, latent):
            np.multiply(zi[:, k:k + 1], basis[k], out=t)
            o += t
    X += rng.standard_normal((rows, features), dtype=np.float32)
    return X


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=60000)
    p.add_argument("--features", type=int, default=784)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/synthetic_data.json")
    args = p.parse_args(argv)
    spec = f"rows={args.rows},features={args.features},classes={args.classes}"
    cases = {"earlier draw": lambda: earlier_draw(args.rows, args.features, args.classes),
             "distbp's draw": lambda: data._synthetic(spec, 0)[0]["X"]}
    same = np.array_equal(cases["earlier draw"](), cases["distbp's draw"]())
    times = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    rows = [{"draw": name, "seconds": med[name], "earlier/this": med["earlier draw"] / med[name]} for name in cases]
    print_table(rows, ["draw", "seconds", "earlier/this"],
                title=f"synthetic:{spec}, median of {args.rounds} rounds in turns; the same X: {same}")
    write_json(args.out, {"benchmark": "synthetic_data", "spec": spec, "same_bits": same, "seconds": times,
                          "machine": machine()})
    if not same:
        raise SystemExit("the two draws differ")


if __name__ == "__main__":
    main()
