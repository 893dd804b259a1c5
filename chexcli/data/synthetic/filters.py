"""Small float32 image operations of the synthetic generator."""

from __future__ import annotations

import math

import numpy as np

from chexcli.data.synthetic.scene import F32, SIDE


def blur(img: np.ndarray, passes: int) -> np.ndarray:
    """Binomial [1, 2, 1] / 4 blur of a float32 (H, W) image, ``passes`` times per axis
    (sigma ~0.7 * sqrt(passes) pixels); edges replicated."""
    for _ in range(passes):
        p = np.concatenate([img[:1], img, img[-1:]], axis=0)
        img = (p[:-2] + p[2:]) * F32(0.25) + p[1:-1] * F32(0.5)
        p = np.concatenate([img[:, :1], img, img[:, -1:]], axis=1)
        img = (p[:, :-2] + p[:, 2:]) * F32(0.25) + p[:, 1:-1] * F32(0.5)
    return img


def smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """Uniform noise in [-1, 1] on a (cells+1)^2 lattice, bilinearly upsampled: float32 (SIDE, SIDE).

    ``cells`` divides SIDE, so every lattice cell covers the same ``SIDE // cells`` pixels.
    """
    step = SIDE // cells
    g = rng.uniform(-1, 1, size=(cells + 1, cells + 1)).astype(F32)
    f = np.tile(np.arange(step, dtype=F32) / step, cells)
    rows = np.repeat(g[:-1], step, 0) * (1 - f)[:, None] + np.repeat(g[1:], step, 0) * f[:, None]
    return np.repeat(rows[:, :-1], step, 1) * (1 - f)[None] + np.repeat(rows[:, 1:], step, 1) * f[None]


def fast_atan2(y, x):
    """atan2 to ~1e-4 rad with a polynomial (numpy's is ~100x slower on float32)."""
    ax, ay = np.abs(x), np.abs(y)
    swap = ay > ax
    a = np.minimum(ax, ay) / (np.maximum(ax, ay) + F32(1e-6))
    s = a * a
    r = ((F32(-0.0464964749) * s + F32(0.15931422)) * s - F32(0.327622764)) * s * a + a
    r = r + swap * (F32(math.pi / 2) - 2 * r)
    r = r + (x < 0) * (F32(math.pi) - 2 * r)
    return r - (y < 0) * (2 * r)


def smoothstep(x):
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def dilate(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary dilation by ``k`` steps of the 4-neighbourhood."""
    out = mask.copy()
    for _ in range(k):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out
