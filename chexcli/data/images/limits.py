"""The pixel-count limit every image reader applies, from the header, before decoding."""

from __future__ import annotations

import os

from chexcli.errors import ChexError

# The largest chest X-rays are about 4300 x 4300 (18.5 Mpx). Decoding costs up to ~20 bytes
# per pixel (DICOM LUTs run in float64), so the default keeps one image near 1 GB.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
MAX_PIXELS_ENV = "CHEX_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int | None:
    """The pixel-count limit of every image reader: ``$CHEX_MAX_IMAGE_PIXELS`` when set
    (a positive integer; ``0`` or ``none`` switches the limit off), else 50 million."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    if text.lower() in ("0", "none", "off"):
        return None
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise ChexError(f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r}: give a positive number of pixels "
                        "(for example 100000000), or 0 for no limit")
    return value


def check_pixel_count(path: str | os.PathLike, width: int, height: int, max_pixels: int | None = None) -> None:
    """Refuse (ChexError) an image of ``width`` x ``height`` over the pixel limit.

    ``max_pixels`` None means :func:`max_image_pixels`.
    """
    limit = max_image_pixels() if max_pixels is None else max_pixels
    if limit and int(width) * int(height) > limit:
        raise ChexError(
            f"{path}: image of {width} x {height} = {int(width) * int(height) / 1e6:.1f} megapixels exceeds the "
            f"limit of {limit / 1e6:g} megapixels; raise it with {MAX_PIXELS_ENV}=N if the image is genuine")
