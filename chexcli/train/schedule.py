"""Learning-rate schedule: linear warm-up from 0, then a single cosine (TRAINING.md §2.3).

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
    """The parameters of `lr_at`; `lr(t)` is the rate at step t (no other state to save or resume)."""

    base_lr: float
    min_lr: float
    warmup: int
    total: int

    def lr(self, update_index: int) -> float:
        return lr_at(update_index, self.base_lr, self.min_lr, self.warmup, self.total)
