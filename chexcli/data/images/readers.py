"""Read chest X-ray images as single-channel arrays: the one home of the image readers.

Supported inputs:

* PNG and JPEG, 8- or 16-bit. No other raster format is read (:data:`IMAGE_FORMATS`):
  TIFF, BMP, GIF, WebP, JPEG 2000, EPS and the rest of what Pillow could open are
  refused with a one-line error that names the format, so a decoder nobody tested
  (or Ghostscript, for EPS) never runs on an uploaded file.
  8-bit images of any colour mode (``L``, ``RGB``, ``RGBA``, ``LA``, ``P``, ...)
  are converted exactly as ``PIL.Image.convert("L")`` does (ITU-R 601-2 luma with
  Pillow's integer rounding, alpha ignored), which is what the reference does, so
  the result matches it bit for bit. 16-bit grayscale (``I;16*``, ``I``) keeps its
  full precision. EXIF orientation is *not* applied (the reference ignores it).
* DICOM (``.dcm``/``.dicom`` files, or any file with the ``DICM`` magic): first
  frame, modality LUT (rescale slope/intercept), VOI LUT / windowing, min-max
  scaling to [0, 1], inverted for ``MONOCHROME1``.

Every failure (missing, unreadable, corrupt or unsupported file, missing DICOM
decoder, an image over the pixel limit) raises :class:`chexcli.errors.ChexError`
with a one-line message that starts with the path.

Pixel limit: every reader refuses an image whose width x height exceeds
:func:`max_image_pixels` (``$CHEX_MAX_IMAGE_PIXELS``, default 50 million), read
from the header before anything is decoded. Readers outside this module that
decode images themselves call :func:`check_image_size` (or
:func:`check_pixel_count` when they already know the size) first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from chexcli.data.images.arrays import FLOAT, to_uint8, to_unit_float
from chexcli.data.images.dicom import dcmread, dicom_rows_cols, read_dicom
from chexcli.data.images.files import IMAGE_FORMATS, PIL_FORMATS, check_file, is_dicom
from chexcli.data.images.limits import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, check_pixel_count, max_image_pixels
from chexcli.data.images.pil import open_pil_image, open_pil_quietly, read_pil, sniff_pil_format
from chexcli.errors import ChexError

__all__ = ["IMAGE_FORMATS", "PIL_FORMATS", "open_pil_image", "sniff_pil_format", "read_image", "read_image_uint8",
           "is_dicom", "image_size", "check_image_size", "check_pixel_count", "max_image_pixels",
           "DEFAULT_MAX_IMAGE_PIXELS", "MAX_PIXELS_ENV"]


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as grayscale float32 in [0, 1].

    Args:
        path: PNG, JPEG or DICOM file.
        max_pixels: refuse images with more pixels (default: :func:`max_image_pixels`).

    Returns:
        ``np.ndarray`` float32 of shape (H, W), values in [0, 1]. 8-bit images are
        ``convert("L")`` / 255, 16-bit images / 65535, DICOMs min-max scaled.

    Raises:
        ChexError: the file is missing, unreadable, corrupt, unsupported or too large.
    """
    return to_unit_float(*_read(Path(path), max_pixels))


def read_image_uint8(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as 8-bit grayscale.

    Args:
        path: PNG, JPEG or DICOM file.
        max_pixels: refuse images with more pixels (default: :func:`max_image_pixels`).

    Returns:
        ``np.ndarray`` uint8 of shape (H, W). 8-bit images are exactly
        ``convert("L")``; 16-bit images and DICOMs are rounded from [0, 1] * 255.

    Raises:
        ChexError: the file is missing, unreadable, corrupt, unsupported or too large.
    """
    return to_uint8(*_read(Path(path), max_pixels))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG or DICOM file, read from its header (nothing is decoded)."""
    p = Path(path)
    check_file(p)
    if is_dicom(p):
        ds = dcmread(p, stop_before_pixels=True)
        rows, cols = dicom_rows_cols(ds)
        if rows is None:
            raise ChexError(f"{p}: the DICOM header has no Rows/Columns (not an image)")
        return cols, rows
    with open_pil_quietly(p) as im:
        return im.size


def check_image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """Read the header of ``path`` and refuse it (ChexError) when it has more pixels than the
    limit; returns (width, height). The check every reader shares, before decoding."""
    width, height = image_size(path)
    check_pixel_count(path, width, height, max_pixels)
    return width, height


def _read(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """Return (array (H, W), kind) with kind u8 (uint8), u16 (uint16) or float ([0, 1])."""
    check_file(path)
    if is_dicom(path):
        return read_dicom(path, max_pixels), FLOAT
    return read_pil(path, max_pixels)
