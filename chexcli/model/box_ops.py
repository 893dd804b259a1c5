"""Box format helpers. Center format is (x_c, y_c, w, h); corner format (x1, y1, x2, y2)."""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) center format -> (..., 4) corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) center format."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def clip_boxes(boxes: Tensor) -> Tensor:
    """Intersect center-format boxes (..., 4) with the unit square."""
    return xyxy_to_cxcywh(cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))


def hull_box(boxes: Tensor) -> Tensor:
    """Axis-aligned hull of R center-format boxes: (..., R, 4) -> (..., 4)."""
    corners = cxcywh_to_xyxy(boxes)
    lo = corners[..., :2].amin(dim=-2)
    hi = corners[..., 2:].amax(dim=-2)
    return xyxy_to_cxcywh(torch.cat([lo, hi], dim=-1))


def soft_roi_pool(features: Tensor, boxes: Tensor, beta: float = 2.0) -> Tensor:
    """Generalised-Gaussian soft ROI pooling (ARCHITECTURE.md §5.4).

    features: (N, H, W, d) patch map; boxes: (N, K, 4) center format in [0, 1].
    Kernel per box: exp(-(|x - x_c| / w)^beta - (|y - y_c| / h)^beta) at the patch
    centres, divided by its maximum over the grid (peak 1). Returns the
    kernel-weighted *sum* of patch features: (N, K, d).
    """
    n, hh, ww, d = features.shape
    dtype = features.dtype
    features = features.float()
    boxes = boxes.float()
    xs = (torch.arange(ww, device=boxes.device, dtype=torch.float32) + 0.5) / ww
    ys = (torch.arange(hh, device=boxes.device, dtype=torch.float32) + 0.5) / hh
    cx, cy, bw, bh = (t[..., None] for t in boxes.unbind(-1))
    ex = ((xs - cx).abs() / bw) ** beta  # (N, K, W)
    ey = ((ys - cy).abs() / bh) ** beta  # (N, K, H)
    kernel = torch.exp(-(ey[..., :, None] + ex[..., None, :]))  # (N, K, H, W)
    kernel = kernel / (kernel.amax(dim=(-2, -1), keepdim=True) + 1e-12)
    pooled = torch.einsum("nkhw,nhwd->nkd", kernel, features)
    return pooled.to(dtype)
