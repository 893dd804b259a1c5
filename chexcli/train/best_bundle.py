"""Which validation is the best so far (docs/training.md#best-bundle): RUN_DIR/bundle-best holds its model.

The metric is the recipe's `run.best_metric`, or with `auto` the first validation's headline
metric (the first evaluation task's, BLEU-4 for txtgen), else `val/loss`. A metric whose name
holds `loss` is minimised, any other maximised. A value that is missing or not finite never wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from chexcli.train.validation import Validation


@dataclass
class BestMetric:
    """The best value of the chosen metric so far (`value`, None before any; restored on resume)."""

    wanted: str = "auto"
    key: str | None = None
    mode: str = "max"
    value: float | None = None

    def improved_by(self, result: Validation) -> bool:
        """Whether `result` beats the best so far (it then becomes the best); chooses the metric first."""
        if self.key is None:
            self.key, self.mode = self._choose(result.headline)
        value = result.metrics.get(self.key)
        better = value is not None and math.isfinite(value) and (
            self.value is None or (value > self.value if self.mode == "max" else value < self.value))
        if better:
            self.value = value
        return better

    def _choose(self, headline: str | None) -> tuple[str, str]:
        if self.wanted and self.wanted != "auto":
            return self.wanted, "min" if "loss" in self.wanted else "max"
        if headline:
            return headline, "max"
        return "val/loss", "min"


__all__ = ["BestMetric"]
