"""A benchmark of this checkout side by side with the same benchmark of another commit, in turns.

    .venv/bin/python benchmarks/versions.py --against 8b77ddb features.py --ranks 1,2
    .venv/bin/python benchmarks/versions.py --against 8b77ddb --rounds 3 step.py --no-torch
    .venv/bin/python benchmarks/versions.py --against e983f30 --rounds 4 optimizers.py --repeats 20

Each round runs the named script of the other commit (a git worktree, its own code on PYTHONPATH),
then this checkout's, so drift of the machine's load falls on both alike; the table gives each
measured case's median time over the rounds and the ratio this/other (below 1: this checkout is
faster). Understands the JSON of step.py (per thread count and case), features.py (per rank
count and variant), optimizers.py (per model and optimizer), small_models.py (bare, fit and train per
case and layout) and vs_sklearn.py (each fit, both libraries, and the partial_fit calls). Writes
results/versions-<script>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, print_table, write_json  # noqa: E402


def cases(script: str, doc: dict) -> dict[str, float]:
    """Milliseconds of every measured case in a benchmark's JSON."""
    if script == "step.py":
        return {f"{r['threads']} thread(s), {case}": 1e3 * s for r in doc["results"] for case, s in r["seconds"].items()}
    if script == "features.py":
        return {f"{r['ranks']} rank(s), {r['variant']}": r["step ms"] for r in doc["measured"]}
    if script == "optimizers.py":
        return {f"{r['model']}, {r['optimizer']}": r["ms"] for r in doc["rows"]}
    if script == "small_models.py":
        return {f"{r['model']} b{r['batch']} {r['dtype']} {r['layout']}, {kind}": r[f"{kind}_us"] / 1e3
                for r in doc["results"] for kind in ("bare", "fit", "train")}
    if script == "vs_sklearn.py":
        fits = {f"{r['library']} {r['model']} {r['solver']} b{r['batch']} {r['dtype']}, fit": 1e3 * r["fit_s"]
                for r in doc["results"]}
        return {**fits, **{f"partial_fit streaming, {r['library']}, a call": r["ms_per_call"]
                           for r in doc["streaming"]}}
    raise SystemExit(f"versions.py does not know the JSON of {script}")


OUTPUT_FLAG = {"optimizers.py": "--json"}  # where a script takes its JSON's path, if not --out


def run(tree: Path, script: str, args: list[str], out: Path, cache: Path) -> dict[str, float]:
    # a Numba cache of this run's own: Numba keys a kernel by its own file's stamp, so a kernel that inlines a
    # function of another file (kernels.lane_sum_of_squares into optim's norms) would load stale code from the
    # checkout's cache after that other file changed
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(cache))
    cmd = [sys.executable, str(tree / "benchmarks" / script), *args, OUTPUT_FLAG.get(script, "--out"), str(out)]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{script} failed in {tree}:\n{done.stdout}\n{done.stderr}")
    return cases(script, json.loads(out.read_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", required=True, metavar="COMMIT")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("script", choices=["step.py", "features.py", "optimizers.py", "small_models.py", "vs_sklearn.py"])
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    a = p.parse_args()
    times: dict[str, dict[str, list[float]]] = {"other": {}, "this": {}}
    with tempfile.TemporaryDirectory(prefix="distbp-versions-") as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), a.against],
                       check=True, capture_output=True)
        try:
            for k in range(a.rounds):
                for name, tree in (("other", other), ("this", ROOT)):
                    for case, ms in run(tree, a.script, a.args, Path(tmp) / f"{name}-{k}.json",
                                        Path(tmp) / f"{name}-numba").items():
                        times[name].setdefault(case, []).append(ms)
                    print(f"round {k + 1}/{a.rounds}: {name} done", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], capture_output=True)
    rows = []
    for case in times["this"]:
        if case not in times["other"]:
            continue
        old, new = statistics.median(times["other"][case]), statistics.median(times["this"][case])
        rows.append({"case": case, f"{a.against} ms": old, "this ms": new, "this/other": new / old})
    print_table(rows, list(rows[0]), f"{a.script} {' '.join(a.args)}: medians over {a.rounds} rounds, "
                                     f"load avg {os.getloadavg()[0]:.1f}")
    write_json(ROOT / "results" / f"versions-{a.script.removesuffix('.py')}.json",
               {"machine": machine(), "against": a.against, "script": a.script, "args": a.args,
                "rounds": a.rounds, "times_ms": times, "table": rows})


if __name__ == "__main__":
    main()
