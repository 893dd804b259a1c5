"""The prompts of an evaluation task: the model's prompt sets and cosine logits against them."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prompt_sets(model) -> dict[str, dict[str, list[str]]]:
    """The prompt sets stored in the model's bundle (the packaged defaults if it has none)."""
    sets = (getattr(model, "prompts", None) or {}).get("prompt_sets")
    if not sets:
        from chexcli.model.bundle import default_prompts

        sets = default_prompts()["prompt_sets"]
    return sets


def cos_logits(features: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """cos(f, p) - cos(f, n): features (..., d), pos/neg broadcastable (..., d)."""
    f = F.normalize(features, dim=-1)
    return (f * F.normalize(pos, dim=-1)).sum(-1) - (f * F.normalize(neg, dim=-1)).sum(-1)
