#!/usr/bin/env python3
"""Golden values: what distbp computed when they were recorded, in tests/golden/values.json.

Every bitwise test of the suite compares two runs of the current code, so a change that alters every mode
alike (the data draw, the epoch permutation, the initialisation, the exact mode's sum, an update rule) passes
them all. These values were computed once and committed; tests/unit/test_golden.py (one process) and
tests/mpi/test_golden_mpi.py (2, 3 and 4 ranks) fail when the code no longer gives them.

    .venv/bin/python tests/golden/record.py            # print what differs from values.json; exit 1 if any
    .venv/bin/python tests/golden/record.py --update   # rewrite values.json from the current code

What values.json holds (the cases and how each is computed: tests/golden/cases.py):
  synthetic           the built-in synthetic draws at two sizes (below and above the data cache's 16 MiB,
                      drawn with the cache off): sha256 of the raw split arrays, of the scaling (offset,
                      factor) and of every row gathered into float64 as a trainer sees it. Exact: the draw
                      uses no BLAS (product_without_blas), so the bits are the same on any CPU and thread count.
  digits              the same for `digits` (scikit-learn's bundled file), held out and standardized.
  epoch_permutation   distbp.data.shard.epoch_permutation(n_rows, seed, epoch): listed, or hashed when long.
  initial_parameters  sha256 of MLP(sizes, activation, dtype, seed).flat_params (He normal for relu, Glorot
                      uniform otherwise; numpy's Generator, no BLAS: exact).
  fixed_point         the exact mode's int64 sums Σ rint(g·S) of fixed float64 and float32 block gradients
                      (hashed), each block's largest |g|, and the floats Σ/S converts back to (hashed).
  fit_float64         float64 parameters after one short distbp.fit (5 steps, 10 for the step schedule) for
                      every optimizer and sync mode, as numbers: BLAS's float64 bits differ between CPUs, so
                      the tests compare them to a relative 1e-9 (cases.FIT_RTOL), which a changed rule exceeds
                      by orders of magnitude (a learning rate 1e-6 off already does). p ranks compute 1 rank's
                      sums in another order and must land within the same tolerance.

When regenerating is legitimate: only after an intended change of a draw or a rule (a new synthetic
generator, another initialisation, a changed optimizer, schedule or fixed-point scale), or a new case added
to cases.py. Run this script first without --update and check that exactly the values the change should move
are the ones that differ; then --update, and say in the commit message which values changed and why. A
difference nobody intended is a bug to fix, not a value to re-record. Rerecord on any machine: the exact
values are the same everywhere, and the fits agree to 1e-9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VALUES = HERE / "values.json"


# numpy, Numba and distbp are imported inside the functions: run as a script, the thread variables are set
# first (below), as tests/conftest.py sets them before the tests import anything


def compute() -> dict:
    """{section: values} of every section, from the current code, in one process; the data cache stays off."""
    os.environ["DISTBP_DATA_CACHE"] = "off"  # small draws are not cached anyway; the 17 MB one must be drawn
    from distbp.comm.serial import SerialComm
    from tests.golden import cases

    return {section: make(SerialComm()) if section == "fit_float64" else make()
            for section, make in cases.SECTIONS.items()}


def differences(recorded: dict, current: dict) -> list[str]:
    """One line per value that differs (fit parameters: beyond cases.FIT_RTOL/FIT_ATOL), per missing or new case."""
    import numpy as np

    from tests.golden import cases

    lines = []
    for section in sorted(set(recorded) | set(current)):
        old, new = recorded.get(section, {}), current.get(section, {})
        for name in sorted(set(old) | set(new)):
            where = f"{section}/{name}"
            if name not in new:
                lines.append(f"{where}: recorded, but no longer a case")
            elif name not in old:
                lines.append(f"{where}: a new case, not recorded")
            elif section == "fit_float64":
                if old[name]["inputs"] != new[name]["inputs"]:
                    lines.append(f"{where}: inputs {old[name]['inputs']} -> {new[name]['inputs']}")
                a, b = np.array(old[name]["params"]), np.array(new[name]["params"])
                if a.shape != b.shape:
                    lines.append(f"{where}: {a.size} parameters recorded, {b.size} now")
                    continue
                if not np.allclose(b, a, rtol=cases.FIT_RTOL, atol=cases.FIT_ATOL):
                    rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), cases.FIT_ATOL / cases.FIT_RTOL)))
                    lines.append(f"{where}: parameters moved, max relative difference {rel:.3g}")
            elif old[name] != new[name]:
                changed = [k for k in sorted(set(old[name]) | set(new[name])) if old[name].get(k) != new[name].get(k)]
                lines.append(f"{where}: {', '.join(changed)} differ")
    return lines


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--update", action="store_true", help="rewrite values.json from the current code")
    args = p.parse_args(argv)
    current = compute()
    if args.update:
        VALUES.write_text(json.dumps(current, indent=1) + "\n")
        print(f"wrote {VALUES.relative_to(REPO)}")
        return 0
    recorded = json.loads(VALUES.read_text()) if VALUES.exists() else {}
    lines = differences(recorded, current)
    for line in lines:
        print(line)
    print(f"{len(lines)} difference(s) from {VALUES.relative_to(REPO)}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    # one thread per pool and the checkout's Numba cache, as tests/conftest.py sets them for the tests
    os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / ".numba_cache"))
    from distbp.host.threads import pin_threads_env

    pin_threads_env(1)
    sys.exit(main(sys.argv[1:]))
