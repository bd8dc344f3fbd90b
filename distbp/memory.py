"""Per-rank memory of a training run: parameters, gradients, optimizer state, activations, scratch.

The figures come from the very objects a run builds: the gradient-sync strategy says how many rows
it computes at once and what it allocates (`GradientSync.memory`), the model module says what its
workspace holds for those rows (`model.workspace_bytes`). So `distbp train --dry-run` says before a
run what each rank will hold, and which per-rank batch fits a memory budget, without drifting from
what training allocates (tests/test_memory.py checks every mode against the arrays of a real run).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

from distbp.model import workspace_bytes

KINDS = ("parameters", "gradients", "optimizer_state", "activations", "batch_buffers", "allreduce_scratch")


def n_params(layers: list[int]) -> int:
    return sum(fi * fo + fo for fi, fo in zip(layers[:-1], layers[1:]))


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
        "activations": workspace_bytes(rows, shape.sizes, shape.dtype) + own.get("activations", 0),
        # the gathered inputs and targets
        "batch_buffers": rows * (shape.sizes[0] * item + (8 if shape.labels else shape.sizes[-1] * item))
        + own.get("batch_buffers", 0),
        "allreduce_scratch": own["allreduce_scratch"],
    }
    out["total"] = sum(out.values())
    return out


def check_fits_machine(sync) -> None:
    """Raise ConfigError when one rank of `sync` would need more memory than this whole machine has."""
    import os

    from distbp.errors import ConfigError

    need = per_rank(sync)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need["total"] > have:
        biggest = max((k for k in need if k != "total"), key=need.get)
        raise ConfigError(f"one rank would need {human(need['total'])} ({human(need[biggest])} of it "
                          f"{biggest.replace('_', ' ')}) but this machine has {human(have)} of memory; see "
                          "--dry-run, and check --layers, --batch-size and the labels")


def plan(layers: list[int], dtype: str, batch_size: int, ranks: int, optimizer: str = "gd",
         shard_optimizer: bool = False, accumulate: int = 1, labels: bool = True, ring_bucket_bytes: int = 0,
         rank: int = 0, **config):
    """The strategy rank `rank` of `ranks` (on one node) would run, sized but not built.

    ring_bucket_bytes: the bucket size when the gradient goes through distbp's ring allreduce (0: MPI's).
    """
    from distbp.config import Config, validate
    from distbp.sync import make_sync
    from distbp.sync.base import Layout, ModelShape

    ring = dict(allreduce="ring", bucket_mb=ring_bucket_bytes / (1 << 20)) if ring_bucket_bytes else {}
    if not ring and not (config.get("reproducible") or shard_optimizer or config.get("comm_dtype")):
        ring = dict(allreduce="mpi")
    cfg = validate(Config(layers=list(layers), dtype=dtype, batch_size=batch_size, optimizer=optimizer,
                          shard_optimizer=shard_optimizer, accumulate=accumulate, **{**ring, **config}))
    shape = ModelShape(tuple(layers), np.dtype(dtype), labels)
    return make_sync(cfg, Layout(rank, ranks, node_sizes=(ranks,)), shape)


def per_rank_bytes(layers: list[int], dtype: str, batch_size: int, ranks: int, optimizer: str = "gd",
                   shard_optimizer: bool = False, accumulate: int = 1, labels: bool = True,
                   ring_bucket_bytes: int = 0, **config) -> dict[str, int]:
    """Bytes per rank by kind for a configuration given by its sizes (rank 0: the largest share)."""
    return per_rank(plan(layers, dtype, batch_size, ranks, optimizer, shard_optimizer, accumulate, labels,
                         ring_bucket_bytes, **config))


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


def largest_batch_per_rank(budget: int, layers: list[int], dtype: str, ranks: int, **kw) -> int:
    """largest_batch for a configuration given by its sizes (the keywords of per_rank_bytes)."""
    return largest_batch(budget, lambda batch: plan(layers, dtype, batch, ranks, **kw), ranks)


def parse_bytes(text: str) -> int:
    """'8GiB', '512MB', '1e9' → bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?i?B?)?\s*", str(text))
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r} (try 8GiB or 512MB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    factor = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
              "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(float(m.group(1)) * factor)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


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


def allocated_bytes(root, skip: tuple = ()) -> int:
    """Bytes of the distinct numpy buffers reachable from `root`: what a run really holds.

    Walks distbp's own objects and any gradient-sync strategy (their attributes and slots), lists, tuples
    and dicts; views count once,
    as the buffer they look into. Objects in `skip` (say the dataset) are not entered. Independent of
    the estimate above, so tests can compare the two.
    """
    from distbp.comm import SharedSegments
    from distbp.sync.base import GradientSync

    seen, buffers, stack = {id(s) for s in skip}, {}, [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, SharedSegments):
            buffers[id(obj)] = obj.mine.nbytes  # this rank's segment; the others' belong to their ranks
        elif isinstance(obj, np.ndarray):
            owner = obj if obj.base is None else obj.base  # numpy points a view's base at the owner
            if isinstance(owner, np.ndarray) and owner.base is None:
                buffers[id(owner)] = owner.nbytes
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif type(obj).__module__.startswith("distbp") or isinstance(obj, GradientSync):
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(getattr(obj, name) for cls in type(obj).__mro__
                         for name in getattr(cls, "__slots__", ()) if hasattr(obj, name))
    return sum(buffers.values())
