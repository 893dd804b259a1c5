"""Learning-rate schedule: linear warm-up from 0, then a single cosine (docs/training.md#learning-rate-schedule).

The cosine is evaluated at the absolute step (the reference's `warmup_prefix`
off), so at the end of warm-up the rate drops from base * (w - 1) / w to the
cosine value at step w. The state is only the step counter, so a resumed run
needs nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(t: int, base_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate at schedule step `t` (0-based; the reference passes micro-steps)."""
    if t >= total:
        return min_lr
    if t < warmup:
        return base_lr * t / warmup
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * t / total))


@dataclass(frozen=True)
class CosineWarmupSchedule:
    """The parameters of `lr_at`; `lr(t)` is the rate of update t (no other state to save or resume).

    `lag` delays the schedule: update t runs at lr_at(t - lag), and the first `lag + 1` updates at
    the warm-up's start. The reference's scheduler runs one update behind (`lag=1`: its first two
    updates run at lr 0); chexcli's recipes use 0.
    """

    base_lr: float
    min_lr: float
    warmup: int
    total: int
    lag: int = 0

    def lr(self, update_index: int) -> float:
        return lr_at(max(0, update_index - self.lag), self.base_lr, self.min_lr, self.warmup, self.total)

    @classmethod
    def from_recipe(cls, optim: dict, total: int) -> "CosineWarmupSchedule":
        """The schedule of a recipe's `optim` section over `total` updates."""
        return cls(optim["lr"], optim["min_lr"], optim["warmup_steps"], total, optim.get("schedule_lag", 0))
