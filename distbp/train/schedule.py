"""The learning rate as a pure function of the global step: a schedule, then a linear warm-up.

    η(s) = warm(s) · decay(s)          s = 0, 1, … the global step (updates done before this one)

decay(s), for S steps in the run (epochs × steps per epoch):
    constant   η
    step       η · lr_decay^k, k = the milestones (epochs × steps per epoch) that s has reached
    cosine     η_f + (η − η_f) · (1 + cos(π·s/S)) / 2
    linear     η + (η_f − η) · s/S
warm(s) = w0 + (1 − w0) · s/W for s < W warm-up steps (w0 = warmup_start), else 1.

Nothing else decides it: a resumed run at step s gets η(s) back, bit for bit. With the seed's summed loss
(`--lr-scale sum`), a fixed η already steps by η·Σₙ∇lⁿ, which grows with the batch: that is the
linear scaling rule (Goyal et al., 2017) built in; `--lr-scale mean` divides by the batch instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from distbp.config import Config


@dataclass(frozen=True)
class Schedule:
    """η(step) for one run: the configuration's schedule with its lengths in steps."""

    lr: float
    kind: str = "constant"
    total_steps: int = 1  # S
    milestones: tuple[int, ...] = ()  # steps
    decay: float = 0.1
    final: float = 0.0
    warmup_steps: int = 0  # W
    warmup_start: float = 0.0  # w0

    @classmethod
    def of(cls, cfg: Config, steps_per_epoch: int) -> "Schedule":
        """The schedule of `cfg` for a run of cfg.epochs epochs of steps_per_epoch steps."""
        warmup = cfg.warmup_steps or cfg.warmup_epochs * steps_per_epoch
        return cls(lr=cfg.lr, kind=cfg.lr_schedule, total_steps=max(1, cfg.epochs * steps_per_epoch),
                   milestones=tuple(m * steps_per_epoch for m in (cfg.lr_milestones or ())), decay=cfg.lr_decay,
                   final=cfg.lr_final, warmup_steps=warmup, warmup_start=cfg.warmup_start)

    def __call__(self, step: int) -> float:
        """η at global step `step` (0 for the first update)."""
        return self.warm(step) * self.decayed(step)

    def decayed(self, step: int) -> float:
        if self.kind == "step":
            return self.lr * self.decay ** sum(step >= m for m in self.milestones)
        t = min(step, self.total_steps) / self.total_steps
        if self.kind == "cosine":
            return self.final + (self.lr - self.final) * (1 + math.cos(math.pi * t)) / 2
        if self.kind == "linear":
            return self.lr + (self.final - self.lr) * t
        return self.lr

    def warm(self, step: int) -> float:
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_start + (1 - self.warmup_start) * step / self.warmup_steps

    @property
    def constant(self) -> bool:
        """True when η never changes (the loop then leaves the optimizer's rate alone)."""
        return self.kind == "constant" and self.warmup_steps == 0
