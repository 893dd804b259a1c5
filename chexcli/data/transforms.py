"""Training and evaluation transforms applied to an image and all its boxes together.

docs/data.md#augmentation: random resized crop -> 224, horizontal flip (p 0.5), affine
(rotation, independent x/y scale, translation), brightness/contrast jitter, Gaussian blur,
normalisation ((x - 0.505) / 0.248). Boxes are relative corner boxes ``(x1, y1, x2, y2)`` in
[0, 1]; after every geometric step they are clipped to the image and dropped when less
than 10 % of their area remains (``min_visibility``).

A ``Targets`` object carries every box group of a sample so that *all* of them follow the
image: anatomy boxes, multi-anatomy member boxes (fix of quirk 9) and finding boxes. On a
horizontal flip, ``swap_laterality=True`` (default; fix of quirk 10) also swaps the
left/right anatomy slots, the multi-anatomy member order and the words "left"/"right"
in sentences; ``swap_laterality=False`` reproduces the reference.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from chexcli.model.config import PIXEL_MEAN, PIXEL_STD  # the one home of the pixel statistics

MIN_VISIBILITY = 0.1


@dataclass
class Targets:
    """Box groups of one sample (relative corner coordinates)."""

    anat_boxes: np.ndarray | None = None  # (A, 4)
    anat_present: np.ndarray | None = None  # (A,) bool
    multi_boxes: np.ndarray | None = None  # (G, 2, 4)
    multi_present: np.ndarray | None = None  # (G, 2) bool
    cls_boxes: np.ndarray | None = None  # (M, 4)
    cls_ids: np.ndarray | None = None  # (M,) int
    cls_extra: list = field(default_factory=list)  # per-box payload kept aligned (e.g. sentences)
    flipped: bool = False

    def copy(self) -> "Targets":
        c = lambda a: None if a is None else np.array(a, copy=True)  # noqa: E731
        return Targets(c(self.anat_boxes), c(self.anat_present), c(self.multi_boxes), c(self.multi_present),
                       c(self.cls_boxes), c(self.cls_ids), list(self.cls_extra), self.flipped)


# ----------------------------------------------------------------------------- box helpers
def _apply_geometry(t: Targets, fn) -> None:
    """Map every box group with ``fn((N, 4)) -> (N, 4)`` then clip + visibility filter."""
    if t.anat_boxes is not None and len(t.anat_boxes):
        nb, keep = _clip_visible(fn(t.anat_boxes))
        t.anat_present = t.anat_present & keep
        t.anat_boxes = np.where(t.anat_present[:, None], nb, 0.0).astype(np.float32)
    if t.multi_boxes is not None and t.multi_boxes.size:
        g = t.multi_boxes.shape[0]
        nb, keep = _clip_visible(fn(t.multi_boxes.reshape(-1, 4)))
        t.multi_present = t.multi_present & keep.reshape(g, 2)
        t.multi_boxes = np.where(t.multi_present[..., None], nb.reshape(g, 2, 4), 0.0).astype(np.float32)
    if t.cls_boxes is not None and len(t.cls_boxes):
        nb, keep = _clip_visible(fn(t.cls_boxes))
        t.cls_boxes = nb[keep].astype(np.float32)
        t.cls_ids = t.cls_ids[keep]
        t.cls_extra = [e for e, k in zip(t.cls_extra, keep) if k] if t.cls_extra else []


def _clip_visible(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(b, dtype=np.float64)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    c = np.clip(b, 0.0, 1.0)
    carea = (c[:, 2] - c[:, 0]).clip(0) * (c[:, 3] - c[:, 1]).clip(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        vis = np.where(area > 0, carea / np.where(area > 0, area, 1), 0.0)
    return c, (carea > 0) & (vis >= MIN_VISIBILITY)


# ----------------------------------------------------------------------------- image helpers
def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize without antialiasing (OpenCV INTER_LINEAR semantics)."""
    if img.shape[-2:] == (size, size):
        return img
    return F.interpolate(img[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def _gaussian_kernel(k: int, sigma: float) -> torch.Tensor:
    x = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    w = torch.exp(-(x ** 2) / (2 * sigma * sigma))
    return w / w.sum()


def gaussian_blur(img: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect-101 borders; k = 0 derives the size from sigma."""
    if k == 0:
        k = int(round(sigma * 8 + 1)) | 1
    if k <= 1:
        return img
    w = _gaussian_kernel(k, sigma)
    pad = k // 2
    x = img[None, None]
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k))
    x = F.pad(x, (0, 0, pad, pad), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, k, 1))
    return x[0, 0]


_LR = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_LR_MAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_left_right(text: str) -> str:
    return _LR.sub(lambda m: _LR_MAP[m.group(1)], text)


def laterality_permutation(names: list[str]) -> np.ndarray:
    """Index permutation that swaps each 'left X' with 'right X' (others stay)."""
    pos = {n: i for i, n in enumerate(names)}
    perm = np.arange(len(names))
    for i, n in enumerate(names):
        other = swap_left_right(n)
        if other != n and other in pos:
            perm[i] = pos[other]
    return perm


# ----------------------------------------------------------------------------- transforms
class EvalTransform:
    """Centre crop to the shorter side, bilinear resize to ``size``, normalise."""

    def __init__(self, size: int = 224, normalize: bool = True):
        self.size, self.normalize = size, normalize

    def __call__(self, img: np.ndarray, t: Targets, rng: np.random.Generator | None = None):
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
        h, w = x.shape
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        if (h, w) != (s, s):
            x = x[y0:y0 + s, x0:x0 + s]
            ox, oy = x0 / w, y0 / h
            _apply_geometry(t, lambda b: (b - [ox, oy, ox, oy]) * [w / s, h / s, w / s, h / s])
        x = _resize(x, self.size)
        if self.normalize:
            x = (x - PIXEL_MEAN) / PIXEL_STD
        return x, t


class TrainTransform:
    """The reference's training augmentation; ``swap_laterality`` fixes quirk 10."""

    def __init__(self, size: int = 224, swap_laterality: bool = True, anatomy_names: list[str] | None = None,
                 normalize: bool = True, crop_scale: tuple[float, float] = (0.5, 1.0), blur_p: float = 0.5):
        self.size = size
        self.swap_laterality = swap_laterality
        self.normalize = normalize
        self.crop_scale = crop_scale  # area fraction of the random resized crop
        self.blur_p = blur_p
        self.anat_perm = laterality_permutation(anatomy_names) if anatomy_names else None

    def __call__(self, img: np.ndarray, t: Targets, rng: np.random.Generator):
        x = torch.from_numpy(np.asarray(img, dtype=np.float32))
        x = self._random_resized_crop(x, t, rng)
        if rng.random() < 0.5:
            x = torch.flip(x, dims=[1])
            _apply_geometry(t, lambda b: np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1))
            t.flipped = True
            if self.swap_laterality:
                self._swap(t)
        x = self._affine(x, t, rng)
        x = self._color(x, rng)
        if rng.random() < self.blur_p:
            sigma = rng.uniform(0.1, 5.0)
            k = int(rng.integers(0, 4))
            x = gaussian_blur(x, 3 if k == 2 else k, sigma)
        if self.normalize:
            x = (x - PIXEL_MEAN) / PIXEL_STD
        return x, t

    # -- steps
    def _random_resized_crop(self, x, t, rng):
        h, w = x.shape
        area = h * w
        ch, cw, y0, x0 = h, w, 0, 0
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw_ = int(round(math.sqrt(target * ratio)))
            ch_ = int(round(math.sqrt(target / ratio)))
            if 0 < cw_ <= w and 0 < ch_ <= h:
                cw, ch = cw_, ch_
                y0 = int(rng.integers(0, h - ch + 1))
                x0 = int(rng.integers(0, w - cw + 1))
                break
        x = x[y0:y0 + ch, x0:x0 + cw]
        ox, oy, sx, sy = x0 / w, y0 / h, w / cw, h / ch
        _apply_geometry(t, lambda b: (b - [ox, oy, ox, oy]) * [sx, sy, sx, sy])
        if (ch, cw) != (self.size, self.size):
            x = F.interpolate(x[None, None], size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0, 0]
        return x

    def _swap(self, t: Targets) -> None:
        if self.anat_perm is not None and t.anat_boxes is not None:
            t.anat_boxes = t.anat_boxes[self.anat_perm]
            t.anat_present = t.anat_present[self.anat_perm]
        if t.multi_boxes is not None:
            t.multi_boxes = t.multi_boxes[:, ::-1].copy()
            t.multi_present = t.multi_present[:, ::-1].copy()
        t.cls_extra = [swap_left_right(e) if isinstance(e, str) else e for e in t.cls_extra]

    def _affine(self, x, t, rng):
        h, w = x.shape
        angle = math.radians(rng.uniform(-10, 10))
        sx, sy = rng.uniform(0.95, 1.0), rng.uniform(0.95, 1.0)
        tx, ty = rng.uniform(-0.02, 0.02) * w, rng.uniform(-0.02, 0.02) * h
        cx, cy = w / 2, h / 2
        cos, sin = math.cos(angle), math.sin(angle)
        # forward map in pixel-edge coordinates: p' = R S (p - c) + c + t
        A = np.array([[cos * sx, -sin * sy], [sin * sx, cos * sy]])
        b = np.array([cx + tx, cy + ty]) - A @ np.array([cx, cy])
        Ainv = np.linalg.inv(A)
        # image: sample each output pixel centre from the inverse-mapped source position
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                                torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
        px = Ainv[0, 0] * (xs - b[0]) + Ainv[0, 1] * (ys - b[1])
        py = Ainv[1, 0] * (xs - b[0]) + Ainv[1, 1] * (ys - b[1])
        grid = torch.stack([px / w * 2 - 1, py / h * 2 - 1], dim=-1).float()[None]
        x = F.grid_sample(x[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]

        def boxes(bx: np.ndarray) -> np.ndarray:
            pts = np.stack([bx[:, [0, 1]], bx[:, [2, 1]], bx[:, [0, 3]], bx[:, [2, 3]]], axis=1) * [w, h]
            q = pts @ A.T + b
            q = q / [w, h]
            return np.concatenate([q.min(axis=1), q.max(axis=1)], axis=1)

        _apply_geometry(t, boxes)
        return x

    @staticmethod
    def _color(x, rng):
        bfac, cfac = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        for o in order:
            if o == 0:
                x = (x * bfac).clamp(0, 1)
            else:
                x = (x * cfac + (1 - cfac) * x.mean()).clamp(0, 1)
        return x
