"""Region classification against positive / negative prompt embeddings (docs/architecture.md#region-classification)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def classify_features(features: Tensor, pos: Tensor, neg: Tensor, normalized: bool = True,
                      temperature: float = 1.0, softmax: bool = False,
                      threshold: float | None = 0.5) -> tuple[Tensor, Tensor]:
    """P = sigmoid((<f, p> - <f, n>) / T), cosines when `normalized`.

    features, pos, neg: tensors with the same number of dimensions that
    broadcast against each other, last axis d (e.g. (N, M, 1, d) vs (1, 1, C, d)).
    `softmax=True` computes softmax([l+, l-])[0], the same function up to
    rounding (the reference's form for temperature-scaled detection scores).
    Returns (probabilities, predictions = P > threshold, or all True if None).
    """
    if not (features.dim() == pos.dim() == neg.dim()):
        raise ValueError("features and prompt embeddings need the same number of dimensions")
    if normalized:
        features, pos, neg = (F.normalize(t, dim=-1) for t in (features, pos, neg))
    pos_logit = (features * pos).sum(-1) / temperature
    neg_logit = (features * neg).sum(-1) / temperature
    if softmax:
        probs = torch.softmax(torch.stack([pos_logit, neg_logit], dim=-1), dim=-1)[..., 0]
    else:
        probs = torch.sigmoid(pos_logit - neg_logit)
    preds = torch.ones_like(probs, dtype=torch.bool) if threshold is None else probs > threshold
    return probs, preds
