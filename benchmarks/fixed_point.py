"""The exact mode's fixed-point add (distbp.sync.exact.add_fixed_point) against the loop it replaced, in turns.

    .venv/bin/python benchmarks/fixed_point.py [--json results/fixed_point.json]

The previous kernel took max |g| with a NaN test (a branch, so the loop stayed scalar); the current one takes
the maximum of the bit patterns of |g| as integers, which vectorises. Both add rint(g·S) into int64 and return
the same values; one block gradient of 784-256-10 (203,530 float32) and of 784-1024-1024-10 (1.86 M).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

import distbp  # noqa: E402,F401  (first: the thread pools' waits before numpy loads)
from benchmarks.common import interleaved_medians, machine, print_table, write_json  # noqa: E402
from distbp.sync.exact import add_fixed_point  # noqa: E402


@njit(cache=True, nogil=True)
def previous_add_fixed_point(acc, g, scale):
    """The kernel before (commit 64b5c44), as it was."""
    m = 0.0
    for i in range(acc.shape[0]):
        v = np.float64(g[i])
        acc[i] += np.int64(np.rint(v * scale))
        a = abs(v)
        if not a <= m:  # larger, or NaN
            m = a if a == a else np.inf
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", default="results/fixed_point.json")
    args = parser.parse_args()
    rows = []
    for n in (203_530, 1_863_690):
        g = (np.random.default_rng(0).standard_normal(n) * 1e-3).astype(np.float32)
        acc, acc_before = np.zeros(n, np.int64), np.zeros(n, np.int64)
        assert add_fixed_point(acc, g, 2.0 ** 40) == previous_add_fixed_point(acc_before, g, 2.0 ** 40)
        assert np.array_equal(acc, acc_before)
        times = interleaved_medians({"before": lambda: previous_add_fixed_point(acc_before, g, 2.0 ** 40),
                                     "now": lambda: add_fixed_point(acc, g, 2.0 ** 40)}, args.repeats)
        rows.append({"elements": n, "before ms": times["before"] * 1e3, "now ms": times["now"] * 1e3,
                     "speed-up": times["before"] / times["now"]})
    print_table(rows, ["elements", "before ms", "now ms", "speed-up"], "fixed-point add, float32 → int64, 1 thread")
    write_json(args.json, {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
