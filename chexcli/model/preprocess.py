"""Image preprocessing of the reference evaluation transform ("rect_center") and box mapping.

Per image (docs/architecture.md#image-input):

1. grayscale float32 in [0, 1] (see :mod:`chexcli.data.images.readers`);
2. optional MIMIC-style pre-downsampling (:func:`area_downsample_256`): shortest side to
   256 with OpenCV ``INTER_AREA`` semantics, centre crop 256 x 256;
3. centre crop to the short side ``s`` with integer offsets ``(H - s) // 2``,
   ``(W - s) // 2``, bilinear resize to 224 x 224 (OpenCV ``INTER_LINEAR`` on float32:
   half-pixel centres, no antialiasing; skipped when the crop is already 224; numpy
   with double-precision coefficients, see :func:`resize_bilinear`);
4. ``(x - 0.505) * float32(1 / 0.248)``.

Boxes given in pixels of the original image map to the model's normalised centre
format ``(x_c, y_c, w, h)`` relative to the square crop (docs/architecture.md#box-formats) with
:func:`pixel_boxes_to_model`; :func:`model_boxes_to_pixels` is its exact inverse.
The mapping uses the same integer crop offsets as the pixels, so boxes and pixels align
exactly (the reference's datasets shift by the un-floored half difference, a sub-pixel
difference on odd size differences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from chexcli.errors import ChexError
from chexcli.model.config import PIXEL_MEAN, PIXEL_STD

__all__ = [
    "IMAGE_SIZE",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "CACHE_SIDE",
    "CropInfo",
    "crop_info",
    "center_crop_square",
    "resize_bilinear",
    "normalize",
    "preprocess_image",
    "preprocess_batch",
    "area_downsample_256",
    "resize_area",
    "pixel_boxes_to_model",
    "model_boxes_to_pixels",
    "validate_pixel_box",
]

IMAGE_SIZE = 224
CACHE_SIDE = 256


# --------------------------------------------------------------------------- crop geometry


@dataclass(frozen=True)
class CropInfo:
    """Where the square centre crop lies in the original image.

    Attributes:
        height, width: original image size H, W in pixels.
        side: crop side s = min(H, W).
        y0, x0: integer crop offsets (H - s) // 2 and (W - s) // 2.
    """

    height: int
    width: int
    side: int
    y0: int
    x0: int

    @property
    def offsets(self) -> tuple[int, int]:
        """(y0, x0)."""
        return self.y0, self.x0


def crop_info(height: int, width: int) -> CropInfo:
    """Crop geometry of the centre square crop of an H x W image."""
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ChexError(f"image of size {width}x{height} (WxH) is empty")
    s = min(height, width)
    return CropInfo(height=height, width=width, side=s, y0=(height - s) // 2, x0=(width - s) // 2)


def _as_gray_float32(img) -> np.ndarray:
    """(H, W) float32 view/copy of a numpy array or tensor; uint8 is divided by 255."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ChexError(f"expected a grayscale image of shape (H, W), got shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255
    return np.asarray(arr, dtype=np.float32)


def center_crop_square(img: np.ndarray) -> np.ndarray:
    """Centre crop to a square of side s = min(H, W).

    Args:
        img: (H, W) array.

    Returns:
        (s, s) view of ``img`` starting at row ``(H - s) // 2``, column ``(W - s) // 2``.
    """
    info = crop_info(*np.shape(img)[:2])
    return img[info.y0 : info.y0 + info.side, info.x0 : info.x0 + info.side]


def _linear_taps(ssize: int, dsize: int) -> tuple[np.ndarray, np.ndarray]:
    """2-tap INTER_LINEAR table for one axis: (index (dsize, 2), float64 weight (dsize, 2)).

    Source coordinate ``(d + 0.5) * scale - 0.5`` in double precision, clamped to the
    edge pixels (OpenCV's half-pixel convention, no antialiasing).
    """
    scale = 1.0 / (dsize / ssize)
    src = (np.arange(dsize, dtype=np.float64) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    frac = src - i0
    low = i0 < 0
    i0[low], frac[low] = 0, 0.0
    high = i0 >= ssize - 1
    i0[high], frac[high] = ssize - 1, 0.0
    idx = np.stack([i0, np.minimum(i0 + 1, ssize - 1)], axis=1)
    wts = np.stack([1.0 - frac, frac], axis=1)
    return idx, wts


def resize_bilinear(img: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize a float32 image to ``size`` x ``size`` like OpenCV ``INTER_LINEAR``.

    Half-pixel centres, edge clamping, no antialiasing; identity when the image already
    has the target size. Computed separably (horizontal pass, rounded to float32, then
    vertical pass) with double-precision coefficients: this reproduces the reference's
    ``cv2.resize`` to within 2 float32 ulps (``torch.nn.functional.interpolate``, which
    computes source coordinates in float32, is off by up to ~4e-6 on 256 -> 224).

    Args:
        img: (h, w) float32 (normally square).
        size: output side.

    Returns:
        (size, size) float32.
    """
    arr = np.asarray(img, dtype=np.float32)
    if arr.shape == (size, size):
        return arr
    h, w = arr.shape
    iy, wy = _linear_taps(h, size)
    ix, wx = _linear_taps(w, size)
    rows = arr[:, ix[:, 0]].astype(np.float64) * wx[:, 0] + arr[:, ix[:, 1]].astype(np.float64) * wx[:, 1]
    rows = rows.astype(np.float32).astype(np.float64)
    out = rows[iy[:, 0]] * wy[:, 0, None] + rows[iy[:, 1]] * wy[:, 1, None]
    return out.astype(np.float32)


def normalize(img, pixel_mean: float = PIXEL_MEAN, pixel_std: float = PIXEL_STD):
    """``(x - mean) * float32(1 / std)`` in float32 (numpy array or tensor, any shape)."""
    mean = np.float32(pixel_mean)
    inv_std = np.reciprocal(np.float32(pixel_std), dtype=np.float32)
    if isinstance(img, torch.Tensor):
        return (img.to(torch.float32) - float(mean)) * float(inv_std)
    arr = np.asarray(img, dtype=np.float32)
    return (arr - mean) * inv_std


def preprocess_image(
    gray: np.ndarray,
    size: int = IMAGE_SIZE,
    pixel_mean: float = PIXEL_MEAN,
    pixel_std: float = PIXEL_STD,
) -> tuple[torch.Tensor, CropInfo]:
    """The reference validation transform of one image.

    Args:
        gray: (H, W) grayscale, float in [0, 1] (uint8 is divided by 255).
        size: model input side (224).
        pixel_mean, pixel_std: normalisation constants (MIMIC statistics).

    Returns:
        ``(x, info)``: x is a float32 tensor of shape (size, size); info the crop geometry
        needed to map boxes between original pixels and model coordinates.
    """
    arr = _as_gray_float32(gray)
    info = crop_info(*arr.shape)
    crop = arr[info.y0 : info.y0 + info.side, info.x0 : info.x0 + info.side]
    resized = resize_bilinear(crop, size)
    x = normalize(resized, pixel_mean, pixel_std)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), info


def preprocess_batch(
    images: Sequence[np.ndarray],
    size: int = IMAGE_SIZE,
    pixel_mean: float = PIXEL_MEAN,
    pixel_std: float = PIXEL_STD,
    return_crop_info: bool = False,
):
    """Preprocess and stack several images.

    Args:
        images: N grayscale (H_i, W_i) images (sizes may differ).

    Returns:
        float32 tensor (N, size, size); with ``return_crop_info=True`` the tuple
        ``(tensor, [CropInfo] * N)``.
    """
    xs, infos = [], []
    for img in images:
        x, info = preprocess_image(img, size, pixel_mean, pixel_std)
        xs.append(x)
        infos.append(info)
    batch = torch.stack(xs) if xs else torch.zeros((0, size, size), dtype=torch.float32)
    return (batch, infos) if return_crop_info else batch


# --------------------------------------------------------------------------- INTER_AREA


def _area_taps(ssize: int, dsize: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's area-decimation table for one axis (downscaling, scale >= 1).

    Returns (index, weight) of shape (dsize, K), padded with weight 0; taps keep
    OpenCV's order so float32 accumulation happens in the same sequence.
    """
    scale = 1.0 / (dsize / ssize)
    taps: list[list[tuple[int, float]]] = []
    for dx in range(dsize):
        fsx1 = dx * scale
        fsx2 = fsx1 + scale
        cell = min(scale, ssize - fsx1)
        sx1, sx2 = math.ceil(fsx1), math.floor(fsx2)
        sx2 = min(sx2, ssize - 1)
        sx1 = min(sx1, sx2)
        row = []
        if sx1 - fsx1 > 1e-3:
            row.append((sx1 - 1, (sx1 - fsx1) / cell))
        for sx in range(sx1, sx2):
            row.append((sx, 1.0 / cell))
        if fsx2 - sx2 > 1e-3:
            row.append((sx2, min(min(fsx2 - sx2, 1.0), cell) / cell))
        taps.append(row)
    k = max(len(r) for r in taps)
    idx = np.zeros((dsize, k), dtype=np.int64)
    wts = np.zeros((dsize, k), dtype=np.float32)
    for i, row in enumerate(taps):
        for j, (si, a) in enumerate(row):
            idx[i, j] = si
            wts[i, j] = np.float32(a)
    return idx, wts


def _area_linear_taps(ssize: int, dsize: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's INTER_AREA coefficients when not both axes shrink (2-tap linear form)."""
    inv_scale = dsize / ssize
    scale = 1.0 / inv_scale
    idx = np.zeros((dsize, 2), dtype=np.int64)
    wts = np.zeros((dsize, 2), dtype=np.float32)
    for dx in range(dsize):
        sx = math.floor(dx * scale)
        fx = float(np.float32((dx + 1) - (sx + 1) * inv_scale))
        fx = 0.0 if fx <= 0 else float(np.float32(fx - math.floor(fx)))
        if sx < 0:
            sx, fx = 0, 0.0
        if sx >= ssize - 1:
            sx, fx = ssize - 1, 0.0
        idx[dx] = (sx, min(sx + 1, ssize - 1))
        wts[dx] = (np.float32(1.0) - np.float32(fx), np.float32(fx))
    return idx, wts


def _apply_taps(img: np.ndarray, idx_y, w_y, idx_x, w_x) -> np.ndarray:
    """Separable weighted sums: horizontal pass then vertical, float32, tap order kept."""
    buf = np.zeros((img.shape[0], idx_x.shape[0]), dtype=np.float32)
    for k in range(idx_x.shape[1]):
        buf += img[:, idx_x[:, k]] * w_x[:, k]
    out = np.zeros((idx_y.shape[0], buf.shape[1]), dtype=np.float32)
    for k in range(idx_y.shape[1]):
        out += w_y[:, k, None] * buf[idx_y[:, k], :]
    return out


def resize_area(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize a float32 (H, W) image like ``cv2.resize(..., interpolation=cv2.INTER_AREA)``.

    * Both axes shrink by integer factors: block averages (sum, then times 1/area).
    * Both axes shrink (general): OpenCV's pixel-area weights, accumulated in float32
      in OpenCV's order.
    * Otherwise (an axis grows): OpenCV's 2-tap "area" linear coefficients.

    Args:
        img: (H, W) float32.
        out_h, out_w: output size.

    Returns:
        (out_h, out_w) float32.
    """
    arr = np.asarray(img, dtype=np.float32)
    h, w = arr.shape
    if (h, w) == (out_h, out_w):
        return arr.copy()
    scale_x, scale_y = 1.0 / (out_w / w), 1.0 / (out_h / h)
    if scale_x >= 1 and scale_y >= 1:
        ix, iy = int(round(scale_x)), int(round(scale_y))
        if abs(scale_x - ix) < np.finfo(np.float64).eps and abs(scale_y - iy) < np.finfo(np.float64).eps:
            total = np.zeros((out_h, out_w), dtype=np.float32)
            for dy in range(iy):
                for dx in range(ix):
                    total += arr[dy : out_h * iy : iy, dx : out_w * ix : ix]
            return total * np.float32(1.0 / (ix * iy))
        idx_y, w_y = _area_taps(h, out_h)
        idx_x, w_x = _area_taps(w, out_w)
    else:
        idx_y, w_y = _area_linear_taps(h, out_h)
        idx_x, w_x = _area_linear_taps(w, out_w)
    return _apply_taps(arr, idx_y, w_y, idx_x, w_x)


def area_downsample_256(img: np.ndarray, side: int = CACHE_SIDE) -> np.ndarray:
    """MIMIC-style image cache step: shortest side to ``side`` with INTER_AREA, centre crop.

    The longer side becomes ``round(longer * side / shorter)`` (round half to even, as
    albumentations ``SmallestMaxSize``); no resize when the shorter side already equals
    ``side``. Crop offsets are ``(size - side) // 2``.

    Args:
        img: (H, W) grayscale, float in [0, 1] (uint8 is divided by 255).
        side: cache side (256).

    Returns:
        (side, side) float32.
    """
    arr = _as_gray_float32(img)
    h, w = arr.shape
    scale = side / float(min(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        arr = resize_area(arr, new_h, new_w)
    h, w = arr.shape
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(arr[y0 : y0 + side, x0 : x0 + side])


# --------------------------------------------------------------------------- boxes


def _boxes_array(boxes, name: str) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ChexError(f"{name} must have shape (M, 4), got {tuple(arr.shape)}")
    return arr


def pixel_boxes_to_model(boxes_xyxy, info: CropInfo) -> np.ndarray:
    """Map pixel corner boxes of the original image to normalised centre format.

    Corners are clipped to the square crop ``[x0, x0 + s] x [y0, y0 + s]``, shifted by the
    integer crop offsets and divided by s (docs/architecture.md#box-formats). A box that lies entirely
    in the cropped-away margin gets zero width or height.

    Args:
        boxes_xyxy: (M, 4) or (4,) pixel corners (x1, y1, x2, y2).
        info: crop geometry of the image (from :func:`preprocess_image`).

    Returns:
        (M, 4) float64 ``(x_c, y_c, w, h)`` in [0, 1] relative to the model input.
    """
    b = _boxes_array(boxes_xyxy, "boxes_xyxy")
    s = float(info.side)
    x1 = (np.clip(b[:, 0], info.x0, info.x0 + s) - info.x0) / s
    x2 = (np.clip(b[:, 2], info.x0, info.x0 + s) - info.x0) / s
    y1 = (np.clip(b[:, 1], info.y0, info.y0 + s) - info.y0) / s
    y2 = (np.clip(b[:, 3], info.y0, info.y0 + s) - info.y0) / s
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=1)


def model_boxes_to_pixels(boxes_cxcywh, info: CropInfo, clip_to_image: bool = False) -> np.ndarray:
    """Inverse of :func:`pixel_boxes_to_model`: normalised centre boxes to pixel corners.

    Args:
        boxes_cxcywh: (M, 4) or (4,) ``(x_c, y_c, w, h)`` relative to the model input
            (predictions may extend beyond [0, 1]).
        info: crop geometry of the image.
        clip_to_image: clamp the corners to the original image ``[0, W] x [0, H]``.

    Returns:
        (M, 4) float64 pixel corners (x1, y1, x2, y2) in the original image.
    """
    b = _boxes_array(boxes_cxcywh, "boxes_cxcywh")
    s = float(info.side)
    cx, cy, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    x1 = (cx - w / 2) * s + info.x0
    x2 = (cx + w / 2) * s + info.x0
    y1 = (cy - h / 2) * s + info.y0
    y2 = (cy + h / 2) * s + info.y0
    out = np.stack([x1, y1, x2, y2], axis=1)
    if clip_to_image:
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, info.width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, info.height)
    return out


def validate_pixel_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """Check a user box ``(x1, y1, x2, y2)`` in pixels of a W x H image.

    Raises:
        ChexError: non-finite values, ``x2 <= x1`` or ``y2 <= y1``, a box entirely
            outside the image, or one extending outside ``[0, W] x [0, H]``.

    Returns:
        The box as four floats.
    """
    vals = np.asarray(box, dtype=np.float64).reshape(-1) if np.size(box) else np.zeros(0)
    if vals.shape != (4,):
        raise ChexError(f"box {list(np.ravel(box))} must have 4 values x1,y1,x2,y2 (pixels)")
    x1, y1, x2, y2 = (float(v) for v in vals)
    text = f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    size = f"image of {width}x{height} pixels (WxH)"
    if not np.all(np.isfinite(vals)):
        raise ChexError(f"{text}: coordinates must be finite numbers")
    if x2 <= x1:
        raise ChexError(f"{text}: x2 must be greater than x1 (boxes are x1,y1,x2,y2 in pixels)")
    if y2 <= y1:
        raise ChexError(f"{text}: y2 must be greater than y1 (boxes are x1,y1,x2,y2 in pixels)")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise ChexError(f"{text} lies entirely outside the {size}")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise ChexError(f"{text} extends outside the {size}; coordinates must be within [0, W] x [0, H]")
    return x1, y1, x2, y2
