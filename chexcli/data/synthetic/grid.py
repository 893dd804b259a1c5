"""The image grid and the canonical frame: pixel <-> canonical coordinates, windows, boxes."""

from __future__ import annotations

import math

import numpy as np

from chexcli.data.synthetic.scene import F32, SIDE, Scene


def canonical_grid(sc: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (u, v) of every pixel centre: two float32 arrays (SIDE, SIDE)."""
    x = np.arange(SIDE, dtype=F32) + F32(0.5)
    dx = x[None, :] - F32(sc.cx)
    dy = x[:, None] - F32(sc.cy)
    c, s = F32(math.cos(sc.angle)), F32(math.sin(sc.angle))
    inv = F32(1.0 / sc.scale)
    return (c * dx + s * dy) * inv, (c * dy - s * dx) * inv


def to_image(sc: Scene, u, v) -> tuple[np.ndarray, np.ndarray]:
    """Canonical points -> image pixel coordinates (x, y)."""
    c, s = math.cos(sc.angle), math.sin(sc.angle)
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return sc.cx + sc.scale * (c * u - s * v), sc.cy + sc.scale * (s * u + c * v)


def bbox(mask: np.ndarray) -> list[float] | None:
    """Pixel box [x1, y1, x2, y2] (x2, y2 exclusive) of a boolean (H, W) mask; None if empty.

    Rows and columns are reduced 8 pixels at a time (the mask viewed as uint64 words).
    """
    words = np.ascontiguousarray(mask, dtype=bool).view(np.uint64)
    nz = np.flatnonzero(words)
    if not len(nz):
        return None
    r0, r1 = nz[0] // words.shape[1], nz[-1] // words.shape[1]
    cols = np.flatnonzero(np.bitwise_or.reduce(words[r0:r1 + 1], axis=0).view(bool))
    return [float(cols[0]), float(r0), float(cols[-1] + 1), float(r1 + 1)]


def window(sc: Scene, us, vs, margin: float) -> tuple[slice, slice]:
    """Image rows and columns that cover the canonical points (us, vs) grown by ``margin``."""
    x, y = to_image(sc, us, vs)
    g = margin * sc.scale + 2
    x0, x1 = max(0, int(math.floor(x.min() - g))), min(SIDE, int(math.ceil(x.max() + g)))
    y0, y1 = max(0, int(math.floor(y.min() - g))), min(SIDE, int(math.ceil(y.max() + g)))
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def windowed(sc: Scene, u, v, us, vs, margin: float, fn) -> np.ndarray:
    """``fn(u, v)`` evaluated only in the window around the points (us, vs), zero elsewhere."""
    sl = window(sc, us, vs, margin)
    out = np.zeros(u.shape, dtype=bool)
    out[sl] = fn(u[sl], v[sl])
    return out
