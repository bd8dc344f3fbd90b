"""Memory helpers for tests and benchmarks: a run's strategy planned from its sizes alone, and an independent
count of the buffers a real run holds, so that tests can hold `distbp.train.memory`'s estimate against it."""

from __future__ import annotations

import numpy as np

from distbp.comm.base import SharedSegments
from distbp.config import Config, validate
from distbp.sync.base import GradientSync, Layout, ModelShape
from distbp.sync.factory import make_sync
from distbp.train.memory import largest_batch, per_rank


def plan(layers: list[int], dtype: str, batch_size: int, ranks: int, optimizer: str = "gd",
         shard_optimizer: bool = False, accumulate: int = 1, labels: bool = True, ring_bucket_bytes: int = 0,
         rank: int = 0, **config):
    """The strategy rank `rank` of `ranks` (on one node) would run, sized but not built.

    ring_bucket_bytes: the bucket size when the gradient goes through distbp's ring allreduce (0: MPI's).
    """
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


def largest_batch_per_rank(budget: int, layers: list[int], dtype: str, ranks: int, **kw) -> int:
    """largest_batch for a configuration given by its sizes (the keywords of per_rank_bytes)."""
    return largest_batch(budget, lambda batch: plan(layers, dtype, batch, ranks, **kw), ranks)


def allocated_bytes(root, skip: tuple = ()) -> int:
    """Bytes of the distinct numpy buffers reachable from `root`: what a run really holds.

    Walks distbp's own objects and any gradient-sync strategy (their attributes and slots), lists, tuples
    and dicts; views count once,
    as the buffer they look into. Objects in `skip` (say the dataset) are not entered. Independent of
    the estimate above, so tests can compare the two.
    """
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
