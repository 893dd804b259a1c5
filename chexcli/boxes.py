"""Box formats and overlaps, for torch tensors and NumPy arrays alike.

Two formats, both normalised to [0, 1] of the network input unless a caller says otherwise:

* center `(x_c, y_c, w, h)`, the model's format (the default: a name without `xyxy`);
* corners `(x0, y0, x1, y1)`, named `xyxy`.

The conversions and `clip_boxes` take either kind: a tensor keeps its type, dtype and
leading shape (..., 4) (and its autograd graph); anything else (arrays, lists) becomes a
float64 array (M, 4). `hull_box` and `generalized_box_iou` are torch-only (model and losses);
the IoU matrices and `paired_iou` are NumPy float64 (metrics, evaluation, data preparation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


# ------------------------------------------------------------------------------------------ formats
def as_boxes(boxes) -> np.ndarray:
    """Any sequence of boxes -> float64 array (M, 4) (empty -> (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return arr.reshape(-1, 4)


def _prepared(boxes):
    return boxes if isinstance(boxes, Tensor) else as_boxes(boxes)


def _join(halves: list, like):
    """Concatenate two (..., 2) halves into (..., 4), as a tensor or an array like `like`."""
    return torch.cat(halves, dim=-1) if isinstance(like, Tensor) else np.concatenate(halves, axis=-1)


def cxcywh_to_xyxy(boxes):
    """(..., 4) center format -> (..., 4) corners (a non-tensor input: float64 (M, 4))."""
    b = _prepared(boxes)
    half = b[..., 2:] / 2
    return _join([b[..., :2] - half, b[..., :2] + half], b)


def xyxy_to_cxcywh(boxes):
    """(..., 4) corners -> (..., 4) center format (a non-tensor input: float64 (M, 4))."""
    b = _prepared(boxes)
    return _join([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], b)


def clip_boxes(boxes):
    """Intersect center boxes (..., 4) with the unit square; returns center boxes."""
    corners = cxcywh_to_xyxy(boxes)
    clipped = corners.clamp(0.0, 1.0) if isinstance(corners, Tensor) else np.clip(corners, 0.0, 1.0)
    return xyxy_to_cxcywh(clipped)


def hull_box(boxes: Tensor) -> Tensor:
    """Axis-aligned hull of R center boxes: (..., R, 4) -> (..., 4)."""
    corners = cxcywh_to_xyxy(boxes)
    lo = corners[..., :2].amin(dim=-2)
    hi = corners[..., 2:].amax(dim=-2)
    return xyxy_to_cxcywh(torch.cat([lo, hi], dim=-1))


# ------------------------------------------------------------------------------------------ overlaps
def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise GIoU of broadcastable center boxes (..., 4) -> (...). Union and hull clamped at 1e-7."""
    a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lo = torch.maximum(a[..., :2], b[..., :2])
    hi = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=-1)
    union = area_a + area_b - inter
    lo_c = torch.minimum(a[..., :2], b[..., :2])
    hi_c = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (hi_c - lo_c).clamp(min=0).prod(dim=-1)
    return inter / union.clamp(min=1e-7) - (hull - union) / hull.clamp(min=1e-7)


def _area(corners: np.ndarray) -> np.ndarray:
    """(..., 4) corner boxes -> (...) areas (0 for inverted boxes)."""
    return (np.clip(corners[..., 2] - corners[..., 0], 0, None)
            * np.clip(corners[..., 3] - corners[..., 1], 0, None))


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """inter / union, 0 where the union is empty."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou_xyxy(a, b) -> np.ndarray:
    """IoU matrix (Ma, Mb) of corner boxes a (Ma, 4), b (Mb, 4) (a single box (4,) counts as (1, 4))."""
    a, b = as_boxes(a), as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return _iou(inter, _area(a)[:, None] + _area(b)[None, :] - inter)


def box_iou_cxcywh(a, b) -> np.ndarray:
    """IoU matrix (Ma, Mb) of center boxes."""
    return box_iou_xyxy(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))


def paired_iou(a, b) -> np.ndarray:
    """Elementwise IoU of broadcastable center boxes a, b (..., 4) -> (...)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    shape = np.broadcast_shapes(a.shape, b.shape)[:-1]
    ca = cxcywh_to_xyxy(np.broadcast_to(a, shape + (4,)).reshape(-1, 4))
    cb = cxcywh_to_xyxy(np.broadcast_to(b, shape + (4,)).reshape(-1, 4))
    wh = np.clip(np.minimum(ca[:, 2:], cb[:, 2:]) - np.maximum(ca[:, :2], cb[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    return _iou(inter, _area(ca) + _area(cb) - inter).reshape(shape)


__all__ = ["as_boxes", "box_iou_cxcywh", "box_iou_xyxy", "clip_boxes", "cxcywh_to_xyxy", "generalized_box_iou",
           "hull_box", "paired_iou", "xyxy_to_cxcywh"]
