"""Per-rank memory of a training configuration: parameters, gradients, optimizer state, activations, scratch.

The figures follow the buffers distbp allocates (see model._Workspace and train.setup),
so `distbp train --dry-run` can say before a run what each rank will hold, and
which per-rank batch fits a memory budget.
"""

from __future__ import annotations

import re

import numpy as np

from distbp.kernels import ROW_CHUNK

STATE_COPIES = {"gd": 0, "momentum": 1, "adam": 2}  # optimizer state arrays of n_params each


def n_params(layers: list[int]) -> int:
    return sum(fi * fo + fo for fi, fo in zip(layers[:-1], layers[1:]))


def per_rank_bytes(layers: list[int], dtype: str, batch_size: int, ranks: int, optimizer: str = "gd",
                   shard_optimizer: bool = False, accumulate: int = 1, labels: bool = True,
                   ring_bucket_bytes: int = 0) -> dict[str, int]:
    """Bytes per rank by kind, and their total.

    ring_bucket_bytes: the bucket size when the gradient goes through distbp's ring allreduce (0: it does
    not), whose one scratch array holds 1/ranks of the largest bucket.
    """
    item = np.dtype(dtype).itemsize
    P = n_params(layers)
    part = -(-P // ranks) if shard_optimizer else P
    rows = micro_batch_rows(batch_size, ranks, accumulate)
    outs = layers[1:]
    out = {
        "parameters": P * item,
        # the whole local gradient, the accumulated one (--accumulate), this rank's part of ∇L (sharded)
        "gradients": P * item * (2 if accumulate > 1 else 1) + (part * item if shard_optimizer else 0),
        "optimizer_state": STATE_COPIES[optimizer] * part * item,
        # z and a per layer, the δ·Wᵀ scratch, per-row losses; plus the gathered inputs and targets
        # ... and the per-chunk column sums of db
        "activations": item * (rows * (2 * sum(outs) + max(outs[:-1], default=1) + 1)
                               + -(-rows // ROW_CHUNK) * max(outs)),
        "batch_buffers": rows * (layers[0] * item + (8 if labels else layers[-1] * item)),
        "allreduce_scratch": ring_scratch_elements(layers, item, ranks, ring_bucket_bytes) * item,
    }
    out["total"] = sum(out.values())
    return out


def ring_scratch_elements(layers: list[int], itemsize: int, ranks: int, bucket_bytes: int) -> int:
    """Elements of the ring allreduce's scratch: ceil(largest bucket / ranks), 0 without a ring."""
    if ranks <= 1 or bucket_bytes <= 0:
        return 0
    from distbp.reducer import bucket_layout

    sizes = [fi * fo + fo for fi, fo in zip(layers[:-1], layers[1:])]
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    largest = max(b.stop - b.start for b in bucket_layout(slices, int(bounds[-1]), itemsize, bucket_bytes))
    return -(-largest // ranks)


def micro_batch_rows(batch_size: int, ranks: int, accumulate: int = 1) -> int:
    """Rows one rank computes at once: its share of the global batch, split into `accumulate` micro-batches."""
    return -(-(-(-batch_size // ranks)) // accumulate)


def largest_batch_per_rank(budget: int, layers: list[int], dtype: str, ranks: int, **kw) -> int:
    """Largest per-rank batch (rows) whose total fits in budget bytes (0 if even one row does not)."""
    def fits(rows: int) -> bool:
        return per_rank_bytes(layers, dtype, rows * ranks, ranks, **kw)["total"] <= budget

    lo, hi = 0, 1
    while fits(hi):  # the total grows with the rows: double, then bisect
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


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


def report(layers, dtype, batch_size, ranks, optimizer, shard_optimizer, accumulate, labels=True,
           budget: int | None = None, ring_bucket_bytes: int = 0) -> str:
    """The --dry-run table."""
    b = per_rank_bytes(layers, dtype, batch_size, ranks, optimizer, shard_optimizer, accumulate, labels,
                       ring_bucket_bytes)
    lines = [f"memory per rank: {'-'.join(map(str, layers))} {dtype}, {n_params(layers)} parameters, global batch "
             f"{batch_size} over {ranks} rank(s) = {micro_batch_rows(batch_size, ranks, accumulate)} rows at once"
             f"{f' (accumulate {accumulate})' if accumulate > 1 else ''}, {optimizer}"
             f"{' sharded' if shard_optimizer else ''}"]
    for k, v in b.items():
        lines.append(f"  {k.replace('_', ' '):16s} {human(v):>12s}")
    if budget is not None:
        rows = largest_batch_per_rank(budget, layers, dtype, ranks, optimizer=optimizer,
                                      shard_optimizer=shard_optimizer, accumulate=accumulate, labels=labels,
                                      ring_bucket_bytes=ring_bucket_bytes)
        lines.append(f"  largest batch per rank within {human(budget)}: {rows} rows "
                     f"(global batch {rows * ranks})")
    return "\n".join(lines)
