"""Loaders of the image cache: decode one image and resize it to the cache's side.

Shorter side to ``side`` with area averaging (the longer side becomes
round-half-even(longer * side / shorter)), then a centre crop with offset
floor((size - side) / 2) (docs/data.md#image-cache). JPEGs are decoded with libjpeg's DCT
scaling ("draft mode") at the smallest scale that is still at least the target size, which
is what makes the cache fast.
"""

from __future__ import annotations

import contextlib

import numpy as np
from PIL import Image, ImageFile

from chexcli.data.images.limits import check_pixel_count
from chexcli.data.images.pil import open_pil_image


def _target_size(w: int, h: int, side: int) -> tuple[int, int]:
    if w <= h:
        return side, int(np.round(h * side / w))
    return int(np.round(w * side / h)), side


def resize_crop(img: Image.Image, side: int, orig_size: tuple[int, int] | None = None) -> np.ndarray:
    """Shorter side -> ``side`` (area averaging), centre crop; ``img`` is a PIL "L" image.

    ``orig_size`` (w, h) is the size of the full-resolution image when ``img`` was decoded
    at a reduced DCT scale; the output size is computed from the original size so that
    draft decoding does not change the geometry.
    """
    w0, h0 = orig_size or img.size
    tw, th = _target_size(w0, h0, side)
    if img.size != (tw, th):
        img = img.resize((tw, th), Image.Resampling.BOX, reducing_gap=None)
    left, top = (tw - side) // 2, (th - side) // 2
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[top:top + side, left:left + side])


def to_gray_pil(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit grayscale; 16-bit and float images are min-max scaled."""
    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGB" if img.mode != "LA" else "L")
    return img.convert("L")


@contextlib.contextmanager
def _tolerant_decoding():
    """Decode truncated files (as the reference's caching does) and turn PIL's size check off
    (the pixel-count limit of the readers replaces it), only for the duration of the block: the
    PIL settings are process-wide."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = True, None
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = saved


def load_cached_image(path: str, side: int) -> tuple[np.ndarray, int, int]:
    """Decode one image file for the cache; returns (uint8 side x side, H, W) of the original.

    PIL's own size check is off here, so the pixel-count limit is checked from the header
    before anything is decoded (an image over it is skipped and listed).
    """
    with _tolerant_decoding(), open_pil_image(path) as img:
        w0, h0 = img.size
        check_pixel_count(path, w0, h0)
        if img.format == "JPEG":
            tw, th = _target_size(w0, h0, side)
            img.draft("L", (tw, th))  # DCT scaling: decoded size stays >= (tw, th)
        img.load()
        gray = to_gray_pil(img)
        return resize_crop(gray, side, (w0, h0)), h0, w0


def array_for_cache(arr: np.ndarray, side: int) -> np.ndarray:
    """Resize an already decoded uint8 (H, W) array for the cache."""
    return resize_crop(Image.fromarray(arr, "L"), side)
