"""Loss terms of ChEX training (docs/training.md#losses), as plain functions with shape docstrings.

Boxes are center format (x_c, y_c, w, h) in [0, 1]. "L1" is the sum of
absolute differences over the four coordinates; GIoU is computed on corners.
The box and matching coefficients are passed in (`BoxCoefficients`), as DETR's
matcher and criterion take theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from chexcli.boxes import generalized_box_iou
from chexcli.train.matcher import batched_balanced_match

@dataclass(frozen=True)
class BoxCoefficients:
    """Coefficients of box regression and matching (the reference's; docs/training.md#box-losses)."""

    l1: float = 5.0  # box loss and matching cost: l1 x L1 + giou x (1 - GIoU)
    giou: float = 2.0
    weights: float = 3.0  # weights x (1 - region weight) in matching costs; pathology: box + weights x weights loss
    cls_cost: float = 1.0  # pathology matching cost: cls_cost x (1 - class probability)


# ------------------------------------------------------------------------------------------ boxes
def box_pair_loss(pred: Tensor, target: Tensor, coeffs: BoxCoefficients = BoxCoefficients()) -> Tensor:
    """Elementwise l1 x L1 + giou x (1 - GIoU) of broadcastable boxes (..., 4) -> (...)."""
    l1 = (pred - target).abs().sum(dim=-1)
    return coeffs.l1 * l1 + coeffs.giou * (1.0 - generalized_box_iou(pred, target))


def box_cost(pred: Tensor, target: Tensor, coeffs: BoxCoefficients = BoxCoefficients()) -> Tensor:
    """Pairwise cost: pred (..., R, 4), target (..., T, 4) -> (..., R, T)."""
    return box_pair_loss(pred[..., :, None, :], target[..., None, :, :], coeffs)


def single_box_loss(pred: Tensor, target: Tensor, present: Tensor,
                    coeffs: BoxCoefficients = BoxCoefficients()) -> tuple[Tensor, int]:
    """Single-box anatomies (docs/training.md#anatomy-detection): every one of the R boxes regresses to the target.

    pred (N, A, R, 4), target (N, A, 4), present (N, A) bool -> (sum over present boxes, R * #present).
    """
    per = box_pair_loss(pred, target[:, :, None, :], coeffs)  # (N, A, R)
    mask = present.bool()
    return (per * mask[..., None]).sum(), int(mask.sum()) * pred.shape[2]


def multi_box_loss(pred: Tensor, weights: Tensor, target: Tensor, target_mask: Tensor,
                   coeffs: BoxCoefficients = BoxCoefficients()) -> tuple[Tensor, int]:
    """Multi-box anatomies (docs/training.md#anatomy-detection): balanced matching with cost
    l1 x L1 + giou x (1 - GIoU) + weights x (1 - w) (5, 2, 3).

    pred (N, G, R, 4), weights (N, G, R), target (N, G, K, 4), target_mask (N, G, K)
    -> (sum over (n, g) with a target of the mean pair loss over assigned pairs, #(n, g) with a target).
    """
    n, g, r, _ = pred.shape
    k = target.shape[2]
    pair = box_cost(pred, target, coeffs)  # (N, G, R, K)
    cost = pair + coeffs.weights * (1.0 - weights)[..., None]
    _, assign = batched_balanced_match(cost.reshape(n * g, r, k), target_mask.reshape(n * g, k))
    assign = assign.view(n, g, r, k).to(pair.dtype)
    has = target_mask.bool().any(dim=-1)  # (N, G)
    per = (assign * pair).sum(dim=(-1, -2)) / assign.sum(dim=(-1, -2)).clamp(min=1.0)
    return (per * has).sum(), int(has.sum())


# ------------------------------------------------------------------------------------------ focal
def binary_focal_loss(prob: Tensor, target: Tensor, alpha: float | Tensor, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss on probabilities: alpha_t (1 - p_t)^gamma BCE(p, y), in fp32.

    prob (...) in [0, 1], target (...) 0/1 -> (...). The BCE uses p clamped to
    [1e-7, 1 - 1e-7]; the modulating factor uses p itself.
    """
    p = prob.float()
    y = target.float()
    pc = p.clamp(1e-7, 1 - 1e-7)
    bce = -(y * pc.log() + (1 - y) * (1 - pc).log())
    p_t = y * p + (1 - y) * (1 - p)
    alpha_t = y * alpha + (1 - y) * (1 - alpha)
    return alpha_t * (1 - p_t) ** gamma * bce


def pathology_detection_loss(pred_boxes: Tensor, weights: Tensor, cls_prob: Tensor, target: Tensor,
                             target_mask: Tensor, class_mask: Tensor, cheapest_matched: bool = False,
                             coeffs: BoxCoefficients = BoxCoefficients()) -> dict[str, Tensor]:
    """Pathology detection (docs/training.md#pathology-detection): matched box loss + weights x
    auto-weighted focal loss on region weights.

    pred_boxes (N, C, R, 4), weights (N, C, R) region weights in [0, 1], cls_prob (N, C, R)
    probability of the positive prompt, target (N, C, M, 4), target_mask (N, C, M) valid
    targets, class_mask (N, C) flagged classes. Returns scalars box_loss, weights_loss and
    total = box_loss + weights x weights_loss.

    The focal alpha = (n_neg + 1) / (n_all + 2) counts the whole N x C x R block of
    `matched` (n_all = N * C * R, unflagged classes included), as the reference does; with
    VinDr every sample flags all its box classes, so this equals the flagged-only count.
    `cheapest_matched`: see chexcli.train.matcher (which shared prediction gets weight target 1).
    """
    n, c, r, _ = pred_boxes.shape
    m = target.shape[2]
    cmask = class_mask.bool()
    pair = box_cost(pred_boxes, target, coeffs)  # (N, C, R, M)
    cost = pair + coeffs.cls_cost * (1.0 - cls_prob)[..., None] + coeffs.weights * (1.0 - weights)[..., None]
    matched, assign = batched_balanced_match(cost.reshape(n * c, r, m), target_mask.reshape(n * c, m),
                                             cheapest_matched)
    matched = matched.view(n, c, r)
    assign = assign.view(n, c, r, m).to(pair.dtype)
    has_box = target_mask.bool().any(dim=-1)  # (N, C)
    per_class = (assign * pair).sum(dim=(-1, -2)) / assign.sum(dim=(-1, -2)).clamp(min=1.0) * has_box
    denom = cmask.sum(dim=1).clamp(min=1)  # (N,) all flagged classes, with or without a box
    box_loss = ((per_class * cmask).sum(dim=1) / denom).mean()

    n_all = matched.numel()
    n_pos = int(matched.sum())
    alpha = (n_all - n_pos + 1) / (n_all + 2)  # = w_pos / (w_pos + w_neg)
    focal = binary_focal_loss(weights, matched, alpha).mean(dim=-1)  # (N, C)
    weights_loss = ((focal * cmask).sum(dim=1) / denom).mean()
    return {"box_loss": box_loss, "weights_loss": weights_loss, "total": box_loss + coeffs.weights * weights_loss}


# ------------------------------------------------------------------------------------------ contrastive
def global_contrastive_loss(image: Tensor, text: Tensor, tau: float = 0.2) -> Tensor:
    """Image-report InfoNCE (docs/training.md#losses), both directions summed: image (N, d), text (N, d) -> scalar."""
    sim = F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t() / tau
    labels = torch.arange(sim.shape[0], device=sim.device)
    return F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)


def sentence_region_contrastive_loss(sentences: Tensor, regions: Tensor, mask: Tensor, tau: float = 0.25) -> Tensor:
    """Region -> sentence InfoNCE with every valid sentence of the batch as a candidate (docs/training.md#losses).

    sentences, regions (N, S, d), mask (N, S) -> mean over samples with a sentence of the
    per-sample mean over its valid sentences.
    """
    mask = mask.bool()
    if not bool(mask.any()):
        return regions.sum() * 0.0
    s = F.normalize(sentences.float(), dim=-1)
    r = F.normalize(regions.float(), dim=-1)
    cands = s[mask]  # (M, d)
    scores = r @ cands.t() / tau  # (N, S, M)
    own = (r * s).sum(dim=-1) / tau  # (N, S)
    loss = (scores.logsumexp(dim=-1) - own) * mask
    per_sample = loss.sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    has = mask.any(dim=1)
    return per_sample[has].mean()


def masked_mse_loss(target: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
    """(docs/training.md#losses) squared L2 over d, weighted m / sum(m) per sample, mean over all N samples.

    target, pred (N, S, d), mask (N, S); a sample without a valid slot contributes 0.
    """
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    m = mask.float()
    sq = ((pred.float() - target.float()) ** 2).sum(dim=-1)
    w = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)
    return (sq * w).sum(dim=1).mean()


def negative_class_subset(labels: Tensor, valid: Tensor, n_negatives: int = 10,
                          generator: torch.Generator | None = None) -> Tensor:
    """The class set K of docs/training.md#losses: labels, valid (N, A, C) -> (C,) bool.

    With C <= n_negatives every class with a valid label; otherwise n_negatives distinct
    classes drawn without replacement with weights (#positive labels of the class) + 1e-7,
    then restricted to classes with a valid label.
    """
    has_valid = valid.bool().flatten(0, 1).any(dim=0)  # (C,)
    c = has_valid.shape[0]
    if c <= n_negatives:
        return has_valid
    weights = labels.bool().flatten(0, 1).sum(dim=0).float().cpu() + 1e-7
    pick = torch.multinomial(weights, n_negatives, replacement=False, generator=generator)
    in_k = torch.zeros(c, dtype=torch.bool)
    in_k[pick] = True
    return in_k.to(has_valid.device) & has_valid


def anatomy_classification_loss(features: Tensor, pos: Tensor, neg: Tensor, labels: Tensor, valid: Tensor,
                                tau: float = 0.25, n_negatives: int = 10,
                                generator: torch.Generator | None = None) -> Tensor:
    """Region classification against positive and "No X" prompts (docs/training.md#losses).

    features (N, A, d) region features, pos/neg (C, d) prompts, labels (N, A, C) 0/1,
    valid (N, A, C) bool -> scalar. Per region: positives P = {p_c: y=1} u {q_c: y=0, c in K},
    candidates D = both prompts of every valid class with y=1 or in K;
    loss = -mean_P score + logsumexp_D score, averaged over regions with any valid label.
    A region whose P is empty (all its valid classes negative and outside K; the reference
    gives -inf there) contributes 0 but still counts.
    """
    valid = valid.bool()
    y = labels.bool() & valid
    in_k = negative_class_subset(labels, valid, n_negatives, generator)[None, None]  # (1, 1, C)
    f = F.normalize(features.float(), dim=-1)
    sp = f @ F.normalize(pos.float(), dim=-1).t() / tau  # (N, A, C) scores of the positive prompts
    sq = f @ F.normalize(neg.float(), dim=-1).t() / tau  # (N, A, C) scores of the "No X" prompts
    pos_q = valid & ~y & in_k  # "No X" is the right answer
    in_d = valid & (y | in_k)  # both prompts of these classes are candidates
    n_pos = y.sum(dim=-1) + pos_q.sum(dim=-1)  # (N, A)
    labelled = valid.any(dim=-1)  # (N, A)
    if not bool(labelled.any()):
        return features.sum() * 0.0
    mean_pos = ((sp * y).sum(dim=-1) + (sq * pos_q).sum(dim=-1)) / n_pos.clamp(min=1)
    very_low = torch.finfo(sp.dtype).min
    cand = torch.cat([sp.masked_fill(~in_d, very_low), sq.masked_fill(~in_d, very_low)], dim=-1)
    loss = torch.where(n_pos > 0, cand.logsumexp(dim=-1) - mean_pos, torch.zeros_like(mean_pos))
    return loss[labelled].sum() / labelled.sum()


def pathology_classification_loss(features: Tensor, pos: Tensor, neg: Tensor, labels: Tensor, mask: Tensor,
                                  tau: float = 0.2) -> Tensor:
    """Image-level classification over the 2C prompts (docs/training.md#losses).

    features (N, C, d) aggregated query features, pos/neg (C, d), labels (N, C), mask (N, C)
    -> masked mean over classes per sample, mean over samples with a flagged class.
    """
    n, c, _ = features.shape
    f = F.normalize(features.float(), dim=-1)
    prompts = F.normalize(torch.cat([pos, neg], dim=0).float(), dim=-1)  # (2C, d)
    logits = f @ prompts.t() / tau  # (N, C, 2C)
    index = torch.arange(c, device=features.device)[None].expand(n, c)
    target = torch.where(labels.bool(), index, index + c)
    ce = F.cross_entropy(logits.reshape(n * c, 2 * c), target.reshape(-1), reduction="none").view(n, c)
    m = mask.bool()
    has = m.any(dim=1)
    if not bool(has.any()):
        return features.sum() * 0.0
    per_sample = (ce * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
    return per_sample[has].mean()


# ------------------------------------------------------------------------------------------ subsampling
def expected_count_subsample(candidates: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Keep each candidate with probability min(1, k / #candidates) (docs/training.md#subsampling); (K,) bool -> (K,) bool.

    When nothing is kept, the first k candidates in index order are.
    """
    cand = candidates.bool()
    count = int(cand.sum())
    if count == 0:
        return cand.clone()
    p = min(1.0, k / count)
    device = generator.device if generator is not None else cand.device
    draw = torch.rand(cand.shape, generator=generator, device=device).to(cand.device)
    keep = cand & (draw < p)
    if not bool(keep.any()):
        first = cand.nonzero().squeeze(1)[:k]
        keep = torch.zeros_like(cand)
        keep[first] = True
    return keep


# ------------------------------------------------------------------------------------------ generation
def generation_loss(logits: Tensor, ids: Tensor, token_mask: Tensor, include_padding: bool = False) -> Tensor:
    """Next-token cross-entropy: logits (B, L, V) predict ids shifted by one (B, L).

    include_padding=True scores every position (the reference, docs/training.md#sentence-generation-targets); False scores
    only real tokens, the final end token included.
    """
    if logits.shape[1] < 2:
        return logits.sum() * 0.0
    pred = logits[:, :-1].float()
    target = ids[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
    if include_padding:
        return ce.mean()
    w = token_mask[:, 1:].reshape(-1).float()
    return (ce * w).sum() / w.sum().clamp(min=1.0)
