"""Which mode flags go together: checked by `distbp.config.validate` before anything is built.

Imports nothing but the errors, so that a configuration is checked without loading a strategy, numpy's
kernels or the communicator (tests/unit/test_sync.py holds it to that).
"""

from __future__ import annotations

from typing import Protocol

from distbp.errors import ConfigError


class ModeFlags(Protocol):
    """What the strategies read from the configuration (`distbp.config.Config` has them all, with their
    meaning beside each field): the mode flags, and the batch and optimizer settings the factory passes on."""

    # the mode flags: which strategy, which transport, how the gradient travels
    reproducible: bool
    shard_optimizer: bool
    comm_dtype: str | None
    allreduce: str
    accumulate: int
    micro_batch: int
    bucket_mb: float
    overlap: bool
    # what the strategy is sized and configured with
    batch_size: int
    threads: int | None
    optimizer: str
    lr: float
    momentum: float
    trust: float
    weight_decay: float
    l2: float
    decay_biases: bool
    clip_grad_norm: float


def check_modes(cfg: ModeFlags) -> None:
    """Raise ConfigError for mode flags that cannot go together (`distbp.config.validate` calls this)."""
    if cfg.reproducible and cfg.comm_dtype:
        raise ConfigError("--reproducible and --comm-dtype conflict: compressed gradients are not exact")
    if cfg.reproducible and (cfg.accumulate > 1 or cfg.shard_optimizer):
        raise ConfigError("--reproducible conflicts with --accumulate and --shard-optimizer "
                          "(it already computes in micro-blocks and sums exactly)")
    if cfg.allreduce in ("ring", "hier") and (cfg.shard_optimizer or cfg.reproducible):
        raise ConfigError(f"--allreduce {cfg.allreduce} conflicts with --shard-optimizer and --reproducible "
                          "(reduce-scattered and exact sums use their own collectives)")
    if cfg.shard_optimizer and cfg.comm_dtype:
        raise ConfigError("--shard-optimizer and --comm-dtype conflict: the reduce-scatter sums full precision")
