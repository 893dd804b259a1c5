"""Box format conversions and IoU (NumPy, float64).

Boxes are `(x_c, y_c, w, h)` normalised to [0, 1] unless a name says `xyxy`
(corners `(x0, y0, x1, y1)`).
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes) -> np.ndarray:
    """Any sequence of boxes -> float64 array (M, 4) (empty -> (0, 4))."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    return arr.reshape(-1, 4)


def cxcywh_to_xyxy(boxes) -> np.ndarray:
    """(M, 4) center format -> (M, 4) corners."""
    b = as_boxes(boxes)
    half = b[:, 2:] / 2.0
    return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)


def xyxy_to_cxcywh(boxes) -> np.ndarray:
    """(M, 4) corners -> (M, 4) center format."""
    b = as_boxes(boxes)
    return np.concatenate([(b[:, :2] + b[:, 2:]) / 2.0, b[:, 2:] - b[:, :2]], axis=1)


def clip_cxcywh(boxes) -> np.ndarray:
    """Clamp the corners of (M, 4) center boxes to [0, 1]; returns center boxes."""
    return xyxy_to_cxcywh(np.clip(cxcywh_to_xyxy(boxes), 0.0, 1.0))


def box_iou_xyxy(a, b) -> np.ndarray:
    """IoU matrix (Ma, Mb) of corner boxes; 0 where the union is empty."""
    a, b = as_boxes(a), as_boxes(b)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def box_iou_cxcywh(a, b) -> np.ndarray:
    """IoU matrix (Ma, Mb) of center-format boxes."""
    return box_iou_xyxy(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b))
