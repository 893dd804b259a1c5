"""Bootstrapping as the reference does it (docs/evaluation.md#bootstrapping), plus the point
estimate on the full set and a 95 % percentile interval.

A metric is any object with `n_units` and `compute(idx) -> dict[str, float]`,
where `idx` is an int array of unit indices (duplicates are distinct units;
`None` means every unit once, in order).

Reference semantics kept: a CPU `torch.Generator` seeded with 2147483647,
fresh for every bootstrap call; all replicate index vectors are drawn first,
each as `torch.randint(B, (B,))`; per key the mean over replicates and the
population standard deviation (ddof = 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

BOOTSTRAP_SEED = 2147483647


class UnitMetric(Protocol):
    n_units: int

    def compute(self, idx=None) -> dict[str, float]: ...


def draw_indices(n_units: int, n_replicates: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Replicate index vectors (R, B) drawn exactly like the reference."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    draws = [torch.randint(n_units, (n_units,), generator=gen) for _ in range(n_replicates)]
    if not draws:
        return np.zeros((0, n_units), dtype=np.int64)
    return torch.stack(draws).numpy().astype(np.int64)


@dataclass
class BootstrapResult:
    """point: metrics on the full set; replicates: key -> (R,) values."""

    point: dict[str, float]
    replicates: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_replicates(self) -> int:
        return len(next(iter(self.replicates.values()))) if self.replicates else 0

    def summary(self) -> dict[str, float]:
        """Flat keys: `k/mean`, `k/std` (reference), `k/point`, `k/ci_low`, `k/ci_high`."""
        out: dict[str, float] = {}
        for key, point in self.point.items():
            vals = self.replicates.get(key)
            if vals is not None and len(vals):
                out[f"{key}/mean"] = float(np.mean(vals))
                out[f"{key}/std"] = float(np.std(vals))  # population std, like the reference
            out[f"{key}/point"] = float(point)
            if vals is not None and len(vals):
                lo, hi = np.percentile(vals, [2.5, 97.5])
                out[f"{key}/ci_low"] = float(lo)
                out[f"{key}/ci_high"] = float(hi)
        return out

    def rows(self) -> list[dict[str, float]]:
        """One dict per replicate (for the `_bootstrap.csv` file)."""
        keys = list(self.replicates)
        return [{k: float(self.replicates[k][r]) for k in keys} for r in range(self.n_replicates)]


def bootstrap(metric: UnitMetric, n_replicates: int, seed: int = BOOTSTRAP_SEED,
              progress: Callable[[int], None] | None = None) -> BootstrapResult:
    """Point estimate plus `n_replicates` resampled computations of `metric`."""
    point = metric.compute(None)
    if n_replicates <= 0 or metric.n_units == 0:
        return BootstrapResult(point, {})
    idx = draw_indices(metric.n_units, n_replicates, seed)
    reps: dict[str, list[float]] = {k: [] for k in point}
    for r in range(n_replicates):
        values = metric.compute(idx[r])
        for k in point:
            reps[k].append(values.get(k, float("nan")))
        if progress is not None:
            progress(r + 1)
    return BootstrapResult(point, {k: np.asarray(v, dtype=np.float64) for k, v in reps.items()})


class CombinedMetric:
    """Several metrics over the same units computed together (merged keys)."""

    def __init__(self, *metrics: UnitMetric):
        if len({m.n_units for m in metrics}) > 1:
            raise ValueError("combined metrics must share their units")
        self.metrics = metrics
        self.n_units = metrics[0].n_units if metrics else 0

    def compute(self, idx=None) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.metrics:
            out.update(m.compute(idx))
        return out
