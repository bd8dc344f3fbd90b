#!/usr/bin/env python3
"""Saved parameters of one run per gradient-sync mode, bit for bit, from two source trees.

A refactor of the training step must not change a single bit of what any mode computes. This script
runs one short training per mode (same seed, same ranks × threads layout) with the source tree given
(PYTHONPATH), hashes the saved parameters, and compares two trees side by side:

    python tests/bitwise_modes.py --against 8b77ddb      # that commit (a git worktree) vs this checkout
    python tests/bitwise_modes.py --record out.json      # only this checkout's hashes

Exit code 1 when any mode's parameters differ. Compare commits that generate the same data: the
synthetic set's map to feature space changed (no BLAS, same bits on any thread count) after the
gradient-sync redesign, so every mode differs from commits before that change, by design. It is not part of the pytest suite (about a minute per
tree, and a cold Numba cache for the other tree); run it whenever the step or a strategy changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = "synthetic:rows=1500,features=24,classes=5"
COMMON = ["--data", DATA, "--layers", "24,48,32,5", "--batch-size", "100", "--epochs", "2", "--seed", "7",
          "--lr", "0.002", "--progress", "none", "--bucket-mb", "0.004"]
# (name, ranks, flags): every mode of the step, each at a layout where it does real communication
MODES = [
    ("plain", 2, []),
    ("ring", 2, ["--allreduce", "ring"]),
    ("mpi", 2, ["--allreduce", "mpi"]),
    ("blocking", 2, ["--no-overlap"]),
    ("bfloat16", 2, ["--comm-dtype", "bfloat16"]),
    ("float16", 2, ["--comm-dtype", "float16"]),
    ("accumulate-3", 2, ["--accumulate", "3"]),
    ("accumulate-3-ring-3-ranks", 3, ["--accumulate", "3", "--allreduce", "ring"]),
    ("shard-optimizer-adam", 2, ["--shard-optimizer", "--optimizer", "adam"]),
    ("shard-optimizer-accumulate-3", 3, ["--shard-optimizer", "--accumulate", "3", "--optimizer", "momentum"]),
    ("reproducible", 2, ["--reproducible", "--micro-batch", "16"]),
    ("reproducible-3-ranks", 3, ["--reproducible", "--micro-batch", "16"]),
    ("mse", 2, ["--loss", "mse"]),
    ("momentum", 2, ["--optimizer", "momentum"]),
    ("adam-mean", 2, ["--optimizer", "adam", "--lr-scale", "mean"]),
    ("one-rank", 1, ["--accumulate", "2"]),
]


def params_hash(path: Path) -> str:
    """sha256 over W0, b0, W1, b1, … of a saved .npz, in layer order."""
    with np.load(path) as z:
        params = [k for k in z.files if k[:1] in ("W", "b") and k[1:].isdigit()]  # not a model file's description
        names = sorted(params, key=lambda k: (int(k[1:]), k[0]))
        h = hashlib.sha256()
        for k in names:
            h.update(k.encode())
            h.update(np.ascontiguousarray(z[k]).tobytes())
    return h.hexdigest()


def run_modes(tree: Path, workdir: Path) -> dict[str, str]:
    """{mode: hash of the saved parameters} for the distbp package in `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(tree / ".numba_cache"))
    env.pop("DISTBP_INJECT_FAULT", None)
    out = {}
    for name, ranks, flags in MODES:
        save = workdir / f"{name}.npz"
        cmd = [sys.executable, str(REPO / "launch" / "local"), "-n", str(ranks), "--threads", "1",
               "distbp", "train", *COMMON, *flags, "--save", str(save)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            sys.exit(f"{name} failed in {tree}:\n{done.stdout}\n{done.stderr}")
        out[name] = params_hash(save)
        print(f"  {tree.name}: {name:30s} {out[name][:16]}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", metavar="COMMIT", help="compare this checkout with COMMIT")
    p.add_argument("--record", metavar="JSON", help="write this checkout's hashes to JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="distbp-bitwise-") as tmp:
        tmp = Path(tmp)
        (tmp / "new").mkdir()
        new = run_modes(REPO, tmp / "new")
        if args.record:
            Path(args.record).write_text(json.dumps(new, indent=1) + "\n")
        if not args.against:
            return 0
        old_tree = tmp / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_tree), args.against],
                       check=True, capture_output=True)
        try:
            (tmp / "old-out").mkdir()
            old = run_modes(old_tree, tmp / "old-out")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_tree)],
                           capture_output=True)
    print(f"| mode | ranks | {args.against} | this checkout | same bits |")
    print("| --- | --- | --- | --- | --- |")
    differ = 0
    for name, ranks, _ in MODES:
        same = old[name] == new[name]
        differ += not same
        print(f"| {name} | {ranks} | {old[name][:12]} | {new[name][:12]} | {'yes' if same else 'NO'} |")
    print(f"{len(MODES) - differ} of {len(MODES)} modes bit-identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
