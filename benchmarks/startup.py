"""The first minute: how long from launch to the first step, with the kernel cache in each state.

    .venv/bin/python benchmarks/startup.py                     # 1, 2 and 4 ranks, 3 rounds
    .venv/bin/python benchmarks/startup.py --ranks 2 --rounds 5 --data synthetic

Every case is a real `launch/local -n N distbp train` job on its own Numba cache directory, so the
cases differ only in what that cache holds when the job starts:

- cold: an empty cache (a fresh install without `distbp warmup`): rank 0 compiles, the others then load;
- loaded one after another: every kernel in the cache but no warm mark, the behaviour before the mark
  (rank 0 loads, then the others);
- marked warm: what `distbp warmup` (or a finished earlier run) leaves: all ranks load at once.

A second table takes the demo's data (the default 60000 x 784 synthetic set) on --demo-ranks ranks with
the kernels marked warm, drawn by every rank (DISTBP_DATA_CACHE=off, the behaviour before the data cache)
against read from the data cache that `distbp warmup` filled (distbp.data.cache).

`distbp warmup` itself (into an empty cache) is timed too. Reported per case: `startup_s` (the job's own
figure: from `distbp train`'s start to its first step, in the first epoch's metrics) and the wall time of
the whole 1-epoch job from launch to exit, medians over the rounds; the cases run in turns in each round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.common import machine, print_table, write_json  # noqa: E402

CASES = ("cold", "loaded one after another", "marked warm")
DEMO_CASES = ("drawn by every rank", "from the data cache")


def run(cmd: list[str], cache: Path, data_cache: str, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), DISTBP_DATA_CACHE=data_cache)
    t0 = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    seconds = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return seconds, done


def job(ranks: int, data: str, cache: Path, metrics: Path, data_cache: str = "off") -> dict:
    cmd = [sys.executable, str(REPO / "launch" / "local"), "-n", str(ranks), "distbp", "train", "--data", data,
           "--epochs", "1", "--progress", "none", "--metrics", str(metrics)]
    wall, done = run(cmd, cache, data_cache)
    record = json.loads(metrics.read_text().splitlines()[0])
    line = next(line for line in done.stdout.splitlines() if line.startswith("distbp: start-up"))
    return {"startup_s": record["startup_s"], "wall_s": wall, "line": line}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="1,2,4", help="rank counts, comma separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="synthetic:rows=2000,features=20,classes=3",
                   help="the job's --data (the default's 60000x784 synthetic set adds its own generation time)")
    p.add_argument("--demo-ranks", type=int, default=2, help="ranks of the demo-data table (0: skip it)")
    p.add_argument("--out", default="results/startup.json")
    args = p.parse_args(argv)
    ranks = [int(r) for r in args.ranks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        warmed = tmp / "warmed"
        data_cache = tmp / "data"
        warmup_s, done = run([sys.executable, "-m", "distbp", "warmup"], warmed, str(data_cache))
        warmup_line = " / ".join(done.stdout.strip().splitlines())
        marker = warmed / "distbp-warm"
        results = {(n, case): [] for n in ranks for case in CASES}
        demo = {case: [] for case in DEMO_CASES} if args.demo_ranks else {}
        for r in range(args.rounds):
            for case in demo:
                cache = tmp / f"demo-{r}-{case[0]}"
                shutil.copytree(warmed, cache)
                demo[case].append(job(args.demo_ranks, "synthetic", cache, tmp / f"d-{r}-{case[0]}.jsonl",
                                      "off" if case == DEMO_CASES[0] else str(data_cache)))
            for n in ranks:
                for case in CASES:
                    cache = tmp / f"{n}-{r}-{case.replace(' ', '-')}"
                    if case != "cold":
                        shutil.copytree(warmed, cache)
                        if case == "loaded one after another":
                            shutil.rmtree(cache / "distbp-warm")
                    results[(n, case)].append(job(n, args.data, cache, tmp / f"m-{n}-{r}-{case[0]}.jsonl"))
        assert marker.exists()
    rows = []
    for (n, case), runs in results.items():
        rows.append({"ranks": n, "kernel cache": case,
                     "startup_s": statistics.median(x["startup_s"] for x in runs),
                     "job wall s": statistics.median(x["wall_s"] for x in runs), "says": runs[-1]["line"][16:]})
    print(f"distbp warmup into an empty cache: {warmup_s:.1f} s wall ({warmup_line})\n")
    print_table(rows, ["ranks", "kernel cache", "startup_s", "job wall s", "says"],
                title=f"launch to first step, --data {args.data}, 1 epoch; medians of {args.rounds} rounds, "
                      f"load avg {os.getloadavg()[0]:.1f}")
    if demo:
        drawn = statistics.median(x["startup_s"] for x in demo[DEMO_CASES[0]])
        print_table([{"data": case, "startup_s": statistics.median(x["startup_s"] for x in runs),
                      "drawn/this": drawn / statistics.median(x["startup_s"] for x in runs),
                      "job wall s": statistics.median(x["wall_s"] for x in runs), "says": runs[-1]["line"][16:]}
                     for case, runs in demo.items()], ["data", "startup_s", "drawn/this", "job wall s", "says"],
                    title=f"the demo's data (synthetic, 60000x784) on {args.demo_ranks} ranks, kernels marked warm, "
                          f"1 epoch; medians of {args.rounds} rounds")
    write_json(args.out, {"benchmark": "startup", "data": args.data, "rounds": args.rounds, "machine": machine(),
                          "warmup_s": warmup_s, "warmup_line": warmup_line,
                          "results": [{"ranks": n, "case": case, "runs": runs} for (n, case), runs in results.items()],
                          "demo_ranks": args.demo_ranks,
                          "demo": [{"case": case, "runs": runs} for case, runs in demo.items()]})


if __name__ == "__main__":
    main()
