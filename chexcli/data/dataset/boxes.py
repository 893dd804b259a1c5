"""Boxes of a loaded sample: original pixels -> relative corners -> relative centre format."""

from __future__ import annotations

import numpy as np

MIN_SIZE = 0.001


def to_relative(boxes: np.ndarray, H: float, W: float, cached: bool) -> np.ndarray:
    """Original-pixel corner boxes -> relative corner boxes of the loaded image
    (docs/data.md#boxes): the cached image is the centre square of the original."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if cached:
        S = min(H, W)
        cx = (W - S) / 2 if W > H else 0.0
        cy = (H - S) / 2 if H > W else 0.0
        b = (b - [cx, cy, cx, cy]) / S
    else:
        b = b / [W, H, W, H]
    return np.clip(b, 0.0, 1.0)


def valid_boxes(b: np.ndarray) -> np.ndarray:
    """Boxes wider and higher than MIN_SIZE (relative)."""
    return ((b[:, 2] - b[:, 0]) > MIN_SIZE) & ((b[:, 3] - b[:, 1]) > MIN_SIZE)


def to_center(b: np.ndarray) -> np.ndarray:
    """Corner boxes -> float32 ``(x_c, y_c, w, h)``."""
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]],
                    axis=1).astype(np.float32)
