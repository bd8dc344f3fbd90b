"""Per-rank memory of a training run: parameters, gradients, optimizer state, activations, scratch.

The figures come from the very objects a run builds: the gradient-sync strategy says how many rows
it computes at once and what it allocates (`GradientSync.memory`), the model module says what its
workspace holds for those rows (`model.workspace_bytes`). So `distbp train --dry-run` says before a
run what each rank will hold, and which per-rank batch fits a memory budget, without drifting from
what training allocates (tests/unit/test_memory.py checks every mode against the arrays of a real run,
tests/unit/test_dry_run_peak.py the total against the peak memory a real `distbp train` adds).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from distbp.errors import ConfigError
from distbp.host.meminfo import node_shortfall
from distbp.nn.model import workspace_bytes
from distbp.units import human


def per_rank(sync) -> dict[str, int]:
    """Bytes by kind, and their total, that a rank running `sync` (a `GradientSync`, built or not) allocates."""
    shape, rows = sync.shape, sync.rows_at_once
    item = np.dtype(shape.dtype).itemsize
    own = sync.memory()
    out = {
        "parameters": shape.n_params * item,
        "gradients": own["gradients"],
        "optimizer_state": own["optimizer_state"],
        # z and a per layer, the δ·Wᵀ scratch, per-row losses, per-chunk column sums of db
        "activations": workspace_bytes(rows, shape.sizes, shape.dtype, shape.dropped) + own.get("activations", 0),
        # the gathered inputs and targets
        "batch_buffers": rows * (shape.sizes[0] * item + (8 if shape.labels else shape.sizes[-1] * item))
        + own.get("batch_buffers", 0),
        "allreduce_scratch": own["allreduce_scratch"],
    }
    out["total"] = sum(out.values())
    return out


def check_fits_machine(sync) -> None:
    """Raise ConfigError, before anything large is allocated, when the ranks sharing a node would together
    need more memory than the node has available now (MemAvailable: the data is loaded already).

    Ranks per node: the largest node of `sync`'s layout (every rank on it allocates what `per_rank` says)."""
    need = per_rank(sync)
    ranks = max(sync.layout.node_sizes)
    short = node_shortfall(need["total"], ranks)
    if short is not None:
        biggest = max((k for k in need if k != "total"), key=need.get)
        each = f" each, {human(need['total'] * ranks)} for the {ranks} ranks on a node," if ranks > 1 else ""
        raise ConfigError(f"one rank would need {human(need['total'])} ({human(need[biggest])} of it "
                          f"{biggest.replace('_', ' ')}){each} but this machine has {human(short.available)} of "
                          "memory available; see --dry-run, and check --layers, --batch-size and the labels")


def largest_batch(budget: int, plan_for: Callable[[int], object], ranks: int) -> int:
    """Largest per-rank batch (rows) whose total fits in budget bytes (0 if even one row does not).

    plan_for(global_batch) gives the strategy that batch would run.
    """
    def fits(rows: int) -> bool:
        return per_rank(plan_for(rows * ranks))["total"] <= budget

    lo, hi = 0, 1
    while fits(hi):  # the total grows with the rows: double, then bisect
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def report(sync, batch_size: int, optimizer: str, budget: int | None = None,
           plan_for: Callable[[int], object] | None = None) -> str:
    """The --dry-run table for the strategy `sync` (rank 0's: the largest share of rows and state)."""
    shape, size = sync.shape, sync.layout.size
    b = per_rank(sync)
    lines = [f"memory per rank: {'-'.join(map(str, shape.sizes))} {np.dtype(shape.dtype).name}, "
             f"{shape.n_params} parameters, global batch {batch_size} over {size} rank(s) = "
             f"{sync.rows_at_once} rows at once, {optimizer}; {sync.describe()}"]
    for k, v in b.items():
        lines.append(f"  {k.replace('_', ' '):17s} {human(v):>12s}" + (f"  ({v} bytes)" if k == "total" else ""))
    if budget is not None and plan_for is not None:
        rows = largest_batch(budget, plan_for, size)
        lines.append(f"  largest batch per rank within {human(budget)}: {rows} rows (global batch {rows * size})")
    return "\n".join(lines)
