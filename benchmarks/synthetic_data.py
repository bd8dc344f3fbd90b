"""The built-in synthetic dataset at start-up: distbp's draw against the earlier one, and a whole
`load_dataset` drawn against one read from the data cache (distbp.data.cache), side by side, the same bits.

    .venv/bin/python benchmarks/synthetic_data.py                 # the default 60000x784, 10 classes
    .venv/bin/python benchmarks/synthetic_data.py --rows 200000 --rounds 5

The earlier draw formed the product in row blocks of 2.6 MB (CHUNK_ELEMENTS) and added the noise from one
rows x features temporary; distbp's forms it in L2-sized blocks (PRODUCT_BLOCK_BYTES) and draws the noise
block by block into the rows (data.add_standard_normal). Both run in turns in one process; the table gives
medians and the ratio, and the script checks that both give the same X.

The second table is what a rank does before its first step: `load_dataset` (draw, checks, held-out split,
scaling, the gather of one batch) with the cache off, against the same call finding its entry in a
temporary cache folder (written once before the rounds); both datasets must gather the same bits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import distbp  # noqa: E402,F401  (first: sets OpenBLAS's and OpenMP's idle waits before numpy loads)
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from distbp.data import cache as datacache  # noqa: E402
from distbp.data import datasets as data


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
             "distbp's draw": lambda: data._synthetic(data._synthetic_options(spec), 0)["X"]}
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
    loads, same_load = time_loads(f"synthetic:{spec}", args.rounds)
    med_load = {name: statistics.median(ts) for name, ts in loads.items()}
    drawn = med_load["drawn (cache off)"]
    print_table([{"load_dataset": name, "seconds": m, "drawn/this": drawn / m} for name, m in med_load.items()],
                ["load_dataset", "seconds", "drawn/this"],
                title=f"load_dataset, median of {args.rounds} rounds in turns; the same gathered bits: {same_load}")
    write_json(args.out, {"benchmark": "synthetic_data", "spec": spec, "same_bits": same, "seconds": times,
                          "load_dataset_seconds": loads, "same_loaded_bits": same_load, "machine": machine()})
    if not same:
        raise SystemExit("the two draws differ")
    if not same_load:
        raise SystemExit("the cached dataset gathers other bits than the drawn one")


def time_loads(spec: str, rounds: int) -> tuple[dict, bool]:
    """Seconds of load_dataset(spec) per round, drawn and from a cache entry; and whether both gather alike."""
    rows = np.arange(0, 50000, 97, dtype=np.int64)

    def batch(dataset) -> tuple[np.ndarray, np.ndarray]:
        X, y = np.empty((len(rows), dataset.n_features), np.float32), np.empty(len(rows), np.int64)
        dataset.train.gather(rows, X, y)
        return X, y

    previous = os.environ.get(datacache.ENV)
    with tempfile.TemporaryDirectory(prefix="distbp-bench-data-") as folder:
        cases = {"drawn (cache off)": "off", "from the cache": folder}
        try:
            os.environ[datacache.ENV] = folder
            data.load_dataset(spec)  # writes the entry
            gathered, times = {}, {name: [] for name in cases}
            for _ in range(rounds):
                for name, where in cases.items():
                    os.environ[datacache.ENV] = where
                    t0 = time.perf_counter()
                    gathered[name] = batch(data.load_dataset(spec))
                    times[name].append(time.perf_counter() - t0)
        finally:
            if previous is None:
                os.environ.pop(datacache.ENV, None)
            else:
                os.environ[datacache.ENV] = previous
    a, b = gathered.values()
    return times, all(np.array_equal(u, v) for u, v in zip(a, b))


if __name__ == "__main__":
    main()
