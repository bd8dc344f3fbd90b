"""Which mode flags go together: checked by `distbp.config.validate` before anything is built.

Imports nothing but the errors, so that a configuration is checked without loading a strategy, numpy's
kernels or the communicator (tests/unit/test_sync.py holds it to that).
"""

from __future__ import annotations

from distbp.errors import ConfigError


def check_modes(cfg) -> None:
    """Raise ConfigError for mode flags of `cfg` (a `distbp.config.Config`, which calls this from validate) that
    cannot go together."""
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
