"""Gradient-sync strategies, and the one factory that picks one from the configuration.

A strategy (`distbp.sync.base.GradientSync`) owns everything about one way of turning shard gradients
into the same update on every rank: the rows a rank computes, the local gradient (accumulation
included), the sum over ranks and its overlap with the backward pass, the NaN/Inf check, the update,
its checkpoint state, its memory, its header line and its statistics.

    strategy    rows per rank            reduction                      update       module
    allreduce   contiguous share         bucketed allreduce (ring/MPI,  replicated   sync/allreduce.py
                                         optionally 16-bit)
    sharded     contiguous share         bucketed reduce-scatter        sharded +    sync/sharded.py
                                                                        allgather
    exact       whole micro-blocks       int64 fixed-point allreduce    replicated   sync/exact.py

This module is the only code that reads the mode flags (`reproducible`, `shard_optimizer`,
`comm_dtype`, `allreduce`, `accumulate`, `micro_batch`, `bucket_mb`, `overlap`); the rules for which
of them go together live beside it (`distbp.sync.rules`, which the configuration checks without loading
any strategy). A new mode is a new file with a GradientSync subclass and one line in STRATEGIES.
"""

from __future__ import annotations

import importlib
from typing import Callable

from distbp.errors import ConfigError
from distbp.sync.base import GradientSync, Layout, ModelShape, SyncOptions
from distbp.sync.rules import ModeFlags

# name: (the class, or "module:Class" imported when chosen; when it applies). The first that applies wins.
STRATEGIES: dict[str, tuple[type | str, Callable[[ModeFlags], bool]]] = {
    "exact": ("distbp.sync.exact:ExactSync", lambda cfg: cfg.reproducible),
    "sharded": ("distbp.sync.sharded:ShardedSync", lambda cfg: cfg.shard_optimizer),
    "allreduce": ("distbp.sync.allreduce:AllreduceSync", lambda cfg: True),
}


def strategy_name(cfg: ModeFlags) -> str:
    """The registry name of the strategy this configuration runs."""
    return next(name for name, (_, applies) in STRATEGIES.items() if applies(cfg))


def allreduce_algorithm(cfg: ModeFlags, layout: Layout) -> str:
    """The name of the gradient allreduce's transport (--allreduce): "hier", "ring" or "mpi", a key of
    `distbp.sync.transports.TRANSPORTS`, which the strategy builds.

    auto takes the hierarchical allreduce (`distbp.comm.hier`) where it measured as fast as MPI's Iallreduce
    or faster: on one node (the ranks add each other's buckets in shared memory, several times faster than
    distbp's ring and MPICH's Iallreduce, benchmarks/allreduce.py, with no scratch at all), and across nodes
    that each run the same number of ranks, more than one (the node's sum in shared memory, then the slices
    across nodes by distbp's Bruck allreduce, 2·ceil(log₂ h) latencies and 2n(h−1)/h bytes per host:
    benchmarks/hier_cross.py and benchmarks/bench_study.py, docs/multinode.md). With one rank per node there is
    no node sum to win, and MPI's own allreduce, in C, measured level on large buckets and faster on small ones
    (2 and 4 namespace hosts); uneven nodes cannot run hier: both keep the MPI library's.
    Compressed sums (--comm-dtype) go the same way: distbp's transports send 16-bit words between nodes
    and add them with Numba kernels, MPI's path sums them with a Python user op. Reduce-scattered and
    exact sums always use MPI's collectives (check_modes forbids the others).
    """
    if cfg.shard_optimizer or cfg.reproducible:
        return "mpi"
    if cfg.allreduce == "hier" and not layout.even_nodes:
        raise ConfigError(f"--allreduce hier needs the same number of ranks on every node; this job has "
                          f"{', '.join(map(str, layout.node_sizes))} (use --allreduce ring or mpi, or place the ranks "
                          f"evenly)")
    if cfg.allreduce != "auto":
        return cfg.allreduce
    return "hier" if layout.single_node or (layout.even_nodes and layout.node_sizes[0] > 1) else "mpi"


def sync_options(cfg: ModeFlags, layout: Layout) -> SyncOptions:
    """The strategy's view of the configuration."""
    return SyncOptions(batch_size=cfg.batch_size, accumulate=cfg.accumulate, bucket_bytes=int(cfg.bucket_mb * (1 << 20)),
                       overlap=cfg.overlap, comm_dtype=cfg.comm_dtype,
                       transport=allreduce_algorithm(cfg, layout), micro_batch=cfg.micro_batch,
                       threads=cfg.threads,
                       optimizer=cfg.optimizer, lr=cfg.lr, optimizer_options=optimizer_options(cfg),
                       clip_grad_norm=cfg.clip_grad_norm)


def optimizer_options(cfg: ModeFlags) -> dict:
    """The configured optimizer's keyword arguments beyond η (distbp.nn.optim)."""
    options = {"weight_decay": cfg.weight_decay, "decay_biases": cfg.decay_biases}
    if cfg.l2:  # only when on: the kernel keys of every other run stay as they were
        options["l2"] = cfg.l2
    if cfg.optimizer in ("momentum", "lars"):
        options["momentum"] = cfg.momentum
    if cfg.optimizer == "lars":
        options["trust"] = cfg.trust
    return options


def make_sync(cfg: ModeFlags, layout: Layout, shape: ModelShape) -> GradientSync:
    """The strategy for this configuration, sized for this rank and model; nothing allocated until build()."""
    cls, _ = STRATEGIES[strategy_name(cfg)]
    if isinstance(cls, str):
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls(sync_options(cfg, layout), layout, shape)
