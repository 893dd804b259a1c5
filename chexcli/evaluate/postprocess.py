"""Box post-processing of detection candidates (docs/evaluation.md#box-post-processing), NumPy.

Boxes are (M, 4) center format normalised to the 224 x 224 input.
"""

from __future__ import annotations

import numpy as np

from chexcli.boxes import as_boxes, box_iou_xyxy, clip_boxes, cxcywh_to_xyxy, xyxy_to_cxcywh


def scale_boxes(boxes, factors) -> np.ndarray:
    """Multiply w, h by `factors` (scalar or (M,)), keep the center, then clip."""
    b = as_boxes(boxes).copy()
    f = np.asarray(factors, dtype=np.float64)
    b[:, 2:] *= f[..., None] if f.ndim else f
    return clip_boxes(b)


def nms(boxes, scores, labels, threshold: float) -> np.ndarray:
    """Class-aware greedy NMS; indices of kept boxes in descending score.

    A box is suppressed by a higher-scoring kept box of its class with IoU > threshold.
    """
    b = cxcywh_to_xyxy(boxes)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou_xyxy(b, b)
    kept: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        suppressed |= (labels == labels[i]) & (iou[i] > threshold)
    return np.asarray(kept, dtype=np.int64)


def top1_boxfusion(boxes, scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class one box: the enclosing box of all its boxes, score = their max score."""
    b = cxcywh_to_xyxy(boxes)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    out_b, out_s, out_l = [], [], []
    for c in np.unique(labels):
        sel = labels == c
        bc = b[sel]
        out_b.append([bc[:, 0].min(), bc[:, 1].min(), bc[:, 2].max(), bc[:, 3].max()])
        out_s.append(scores[sel].max())
        out_l.append(c)
    return xyxy_to_cxcywh(np.asarray(out_b).reshape(-1, 4)), np.asarray(out_s), np.asarray(out_l, dtype=np.int64)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def detection_scores(weights, logits, by_weights: bool, by_prompts: bool, temperature: float | None) -> np.ndarray:
    """s = [w if by_weights] * [sigmoid(logit / T) if by_prompts] (a missing factor is 1).

    logits are cos(h, p_c) - cos(h, n_c); T = 1 when no temperature is set.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.ones_like(w)
    if by_weights:
        s = s * w
    if by_prompts:
        s = s * sigmoid(np.asarray(logits, dtype=np.float64) / (temperature or 1.0))
    return s


def postprocess_detections(boxes, weights, logits, labels, settings: dict, class_names: list[str]):
    """OD candidates (M,) of one image -> final (boxes (K, 4), scores (K,), labels (K,))."""
    boxes = as_boxes(boxes)
    labels = np.asarray(labels, dtype=np.int64)
    scores = detection_scores(weights, logits, settings.get("classify_by_weights", False),
                              settings.get("classify_by_prompts", True), settings.get("softmax_temperature"))
    factors = settings.get("box_scale_factors") or {}
    if factors:
        per_class = np.array([float(factors.get(n, 1.0)) for n in class_names])
        boxes = scale_boxes(boxes, per_class[labels])
    elif settings.get("clip_boxes", True):
        boxes = clip_boxes(boxes)
    if len(boxes) == 0:
        return boxes, scores, labels
    if settings.get("postprocess", "nms") == "top1_boxfusion":
        return top1_boxfusion(boxes, scores, labels)
    if settings.get("postprocess", "nms") == "nms":
        keep = nms(boxes, scores, labels, float(settings.get("nms_threshold", 0.25)))
        return boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order], labels[order]


def postprocess_grounding(boxes, weights, settings: dict):
    """SG candidates of one sentence -> (boxes, scores) after scale, clip and NMS."""
    boxes = as_boxes(boxes)
    scores = np.asarray(weights, dtype=np.float64)
    boxes = scale_boxes(boxes, float(settings.get("box_scale_factor") or 1.0))
    if len(boxes) == 0:
        return boxes, scores
    keep = nms(boxes, scores, np.zeros(len(boxes), np.int64), float(settings.get("nms_threshold", 0.25)))
    return boxes[keep], scores[keep]
