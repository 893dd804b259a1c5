"""The loss terms of one training forward: the total is the sum of `coefficient x value` over them.

Supervisors record terms here (`weigh`: compute and weight a term when its coefficient is not
0); the objective sums them. Names follow docs/training.md#logged-losses (`l_sent/...`,
`l_anat/...`, `l_cls/...`); recorded values are unweighted scalars. `values()` gives them as
detached tensors, so that a training step never waits for the device; they become floats only
where they are logged (`as_floats`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from chexcli.train.generation import GenerationCall


class LossTerms:
    """`add(name, coeff, value)` records a term of the total; `note(name, value)` a derived sub-loss
    that is reported beside the terms but not added (e.g. `l_anat/anat_single`). `weighted` keeps
    each term's `coeff x value` tensor (per-term gradients in the parity test)."""

    def __init__(self):
        self.weighted: dict[str, Tensor] = {}
        self.coeffs: dict[str, float] = {}
        self._values: dict[str, Tensor] = {}
        self._floats: dict[str, float] = {}
        self._sums: dict[str, list[str]] = {}
        self.pending: dict[str, tuple[float, GenerationCall]] = {}  # generation terms, computed together

    def add(self, name: str, coeff: float, value: Tensor) -> None:
        self.weighted[name] = coeff * value
        self.coeffs[name] = coeff
        self._values[name] = value.detach()

    def weigh(self, name: str, coeff: float, compute: Callable[[], Tensor]) -> None:
        """Record the term `name` as `coeff x compute()`; a coefficient of 0 skips it (uncomputed)."""
        if coeff:
            self.add(name, coeff, compute())

    def note(self, name: str, value: Tensor | float) -> None:
        if isinstance(value, Tensor):
            self._values[name] = value.detach()
        else:
            self._floats[name] = float(value)

    def note_sum(self, name: str, terms: list[str]) -> None:
        """A derived sub-loss: the weighted sum of `terms` (those computed), taken at `values()`."""
        self._sums[name] = list(terms)

    def add_generation(self, name: str, coeff: float, call: GenerationCall) -> None:
        """A generation term, computed by `resolve_generation` with the other calls of the step."""
        self.pending[name] = (coeff, call)

    def resolve_generation(self, losses: Callable[[list[GenerationCall]], list[Tensor]]) -> None:
        """Compute every pending generation term in one generator pass (`losses` maps calls to losses)."""
        if not self.pending:
            return
        names = list(self.pending)
        for name, loss in zip(names, losses([self.pending[n][1] for n in names])):
            self.add(name, self.pending[name][0], loss)
        self.pending.clear()

    def update(self, other: "LossTerms") -> None:
        self.weighted.update(other.weighted)
        self.coeffs.update(other.coeffs)
        self._values.update(other._values)
        self._floats.update(other._floats)
        self._sums.update(other._sums)
        self.pending.update(other.pending)

    def weighted_sum(self, names: list[str] | None = None) -> Tensor | None:
        """Sum of `coeff x value` over `names` (default: every term); None without any."""
        parts = [t for n, t in self.weighted.items() if names is None or n in names]
        if not parts:
            return None
        total = parts[0]
        for t in parts[1:]:
            total = total + t
        return total

    def values(self) -> dict[str, Tensor]:
        """Every recorded value and derived sub-loss as a detached scalar tensor (float32; float64 for
        a value noted as a float)."""
        if self.pending:
            raise RuntimeError(f"generation terms not computed yet: {', '.join(self.pending)}")
        out = {name: torch.tensor(value, dtype=torch.float64) for name, value in self._floats.items()}
        values = dict(self._values)
        for name, parts in self._sums.items():
            total = self.weighted_sum(parts)
            if total is None:
                out[name] = torch.tensor(0.0)
            else:
                values[name] = total.detach()
        out.update({name: v.float().reshape(()) for name, v in values.items()})
        return out

    def metrics(self) -> dict[str, float]:
        """`values()` as floats (one device synchronisation)."""
        return as_floats(self.values())


class RunningSums:
    """Sums of sub-loss tensors over micro-batches or batches, kept on the device in float64 (as
    Python floats would be) until `floats()`."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}

    def add(self, values: dict[str, Tensor], divisor: int = 1) -> None:
        """Add `values / divisor` (a micro-batch's share of an update's mean)."""
        for name, value in values.items():
            part = value.double() / divisor
            self.sums[name] = self.sums[name] + part if name in self.sums else part + 0.0

    def floats(self) -> dict[str, float]:
        return as_floats(self.sums)


def as_floats(values: dict[str, Tensor]) -> dict[str, float]:
    """Scalar tensors -> floats, with one device synchronisation."""
    if not values:
        return {}
    names = list(values)
    device = values[names[0]].device
    return dict(zip(names, torch.stack([values[n].to(device, torch.float64) for n in names]).tolist()))


__all__ = ["LossTerms", "RunningSums", "as_floats"]
