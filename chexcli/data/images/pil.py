"""PNG and JPEG through Pillow, opened only with the formats of the allow-list.

8-bit images of any colour mode become ``convert("L")`` exactly (what the reference does);
16-bit grayscale keeps its precision (docs/data.md#image-readers).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from chexcli.data.images.arrays import FLOAT, U8, U16, minmax
from chexcli.data.images.files import IMAGE_FORMATS, PIL_FORMATS, one_line
from chexcli.data.images.limits import check_pixel_count
from chexcli.errors import ChexError

_PIL_LIMIT_LOCK = threading.Lock()


def open_pil_image(path: str | os.PathLike):
    """``Image.open(path, formats=PIL_FORMATS)`` (header only; lazy), or a one-line ChexError:
    a file in another format names that format, anything else says it is not an image.

    The caller owns PIL's global settings (the pixel limit); use it as a context manager.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path, formats=PIL_FORMATS)
    except UnidentifiedImageError:
        other = sniff_pil_format(path)
        if other:
            raise ChexError(f"{path}: {other} images are not supported (supported: "
                            f"{', '.join(IMAGE_FORMATS)}); convert it to PNG first") from None
        raise ChexError(f"{path}: not a recognised image file (supported: "
                        f"{', '.join(IMAGE_FORMATS)})") from None


def sniff_pil_format(path: str | os.PathLike) -> str | None:
    """The name of the image format Pillow would recognise in ``path`` from its first bytes
    (the plugins' signature checks only; no header is parsed, no decoder runs), or None."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            prefix = f.read(64)
    except OSError:
        return None
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return name
        except Exception:  # a signature check that chokes on a short prefix
            continue
    return None


@contextlib.contextmanager
def open_pil_quietly(path: Path):
    """:func:`open_pil_image` with PIL's own bomb check off: our pixel limit replaces it, so no
    DecompressionBombWarning/Error. One-line ChexError when the file is not an allowed image."""
    from PIL import Image

    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = open_pil_image(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except ChexError:
        raise
    except Exception as e:  # a header the plugin cannot parse
        raise ChexError(f"{path}: corrupt or truncated image file ({one_line(e)})") from None
    with im:
        yield im


def read_pil(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """(array (H, W), kind) of a PNG or JPEG after its header passed the pixel limit."""
    with open_pil_quietly(path) as im:
        check_pixel_count(path, *im.size, max_pixels)
        try:
            im.load()
            return _pil_to_array(im, path)
        except ChexError:
            raise
        except MemoryError:
            raise ChexError(f"{path}: not enough memory to read the image") from None
        except Exception as e:  # any decoder failure: truncated / corrupt data
            raise ChexError(f"{path}: corrupt or truncated image file ({one_line(e)})") from None


def _pil_to_array(im, path: Path) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8), U8
    if mode.startswith("I;16"):
        return np.array(im).astype(np.uint16), U16
    if mode == "I":
        arr = np.array(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16), U16
        return minmax(arr.astype(np.float64)), FLOAT
    if mode == "F":
        arr = np.array(im, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ChexError(f"{path}: floating-point image contains NaN or infinite values")
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr.astype(np.float32), FLOAT
        return minmax(arr), FLOAT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gray = im.convert("L")
    except ValueError as e:
        raise ChexError(
            f"{path}: unsupported image mode {mode!r} ({one_line(e)})"
        ) from None
    return np.array(gray, dtype=np.uint8), U8
