"""Soft ROI pooling: a region feature as a kernel-weighted sum over the patch map (docs/architecture.md#soft-roi-pooling)."""

from __future__ import annotations

import torch
from torch import Tensor


def soft_roi_pool(features: Tensor, boxes: Tensor, beta: float = 2.0) -> Tensor:
    """Generalised-Gaussian soft ROI pooling (docs/architecture.md#soft-roi-pooling).

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
