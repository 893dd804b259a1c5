"""Read chest X-ray images as single-channel arrays.

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

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from chexcli.errors import ChexError

__all__ = ["IMAGE_FORMATS", "PIL_FORMATS", "open_pil_image", "read_image", "read_image_uint8", "is_dicom", "image_size", "check_image_size", "check_pixel_count",
           "max_image_pixels", "DEFAULT_MAX_IMAGE_PIXELS", "MAX_PIXELS_ENV"]

# The largest chest X-rays are about 4300 x 4300 (18.5 Mpx). Decoding costs up to ~20 bytes
# per pixel (DICOM LUTs run in float64), so the default keeps one image near 1 GB.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
MAX_PIXELS_ENV = "CHEX_MAX_IMAGE_PIXELS"

_DICOM_SUFFIXES = {".dcm", ".dicom"}

# The allow-list every reader shares: Pillow opens only these, DICOM goes to pydicom.
PIL_FORMATS = ("PNG", "JPEG")
IMAGE_FORMATS = ("PNG", "JPEG", "DICOM")

# Kinds returned by the internal reader.
_U8, _U16, _FLOAT = "u8", "u16", "float"


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
    arr, kind = _read(Path(path), max_pixels)
    if kind == _U8:
        return arr.astype(np.float32) / 255
    if kind == _U16:
        return arr.astype(np.float32) / 65535
    return np.ascontiguousarray(arr, dtype=np.float32)


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
    arr, kind = _read(Path(path), max_pixels)
    if kind == _U8:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if kind == _U16:
        # round(v * 255 / 65535) in exact integer arithmetic
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(np.rint(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)


def is_dicom(path: str | os.PathLike) -> bool:
    """True when ``path`` has a DICOM suffix or starts with the DICOM preamble + ``DICM``."""
    p = Path(path)
    return p.suffix.lower() in _DICOM_SUFFIXES or _has_dicm_magic(p)


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


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of a PNG, JPEG or DICOM file, read from its header (nothing is decoded)."""
    p = Path(path)
    _check_file(p)
    if is_dicom(p):
        ds = _dcmread(p, stop_before_pixels=True)
        rows, cols = _dicom_rows_cols(ds)
        if rows is None:
            raise ChexError(f"{p}: the DICOM header has no Rows/Columns (not an image)")
        return cols, rows
    with _open_pil(p) as im:
        return im.size


def check_image_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """Read the header of ``path`` and refuse it (ChexError) when it has more pixels than the
    limit; returns (width, height). The check every reader shares, before decoding."""
    width, height = image_size(path)
    check_pixel_count(path, width, height, max_pixels)
    return width, height


def _has_dicm_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


# --------------------------------------------------------------------------- helpers


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (no newlines, bounded length)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ChexError(f"{path}: file not found")
    if path.is_dir():
        raise ChexError(f"{path}: is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except PermissionError:
        raise ChexError(f"{path}: cannot read the file (permission denied)") from None
    except OSError as e:
        raise ChexError(f"{path}: cannot read the file ({_one_line(e)})") from None
    if not first:
        raise ChexError(f"{path}: the file is empty")


def _read(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str]:
    """Return (array (H, W), kind) with kind u8 (uint8), u16 (uint16) or float ([0, 1])."""
    _check_file(path)
    if is_dicom(path):
        return _read_dicom(path, max_pixels), _FLOAT
    return _read_pil(path, max_pixels)


# --------------------------------------------------------------------------- PIL

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
def _open_pil(path: Path):
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
        raise ChexError(f"{path}: corrupt or truncated image file ({_one_line(e)})") from None
    with im:
        yield im


def _read_pil(path: Path, max_pixels: int | None) -> tuple[np.ndarray, str]:
    with _open_pil(path) as im:
        check_pixel_count(path, *im.size, max_pixels)
        try:
            im.load()
            return _pil_to_array(im, path)
        except ChexError:
            raise
        except MemoryError:
            raise ChexError(f"{path}: not enough memory to read the image") from None
        except Exception as e:  # any decoder failure: truncated / corrupt data
            raise ChexError(f"{path}: corrupt or truncated image file ({_one_line(e)})") from None


def _pil_to_array(im, path: Path) -> tuple[np.ndarray, str]:
    mode = im.mode
    if mode == "L":
        return np.array(im, dtype=np.uint8), _U8
    if mode.startswith("I;16"):
        return np.array(im).astype(np.uint16), _U16
    if mode == "I":
        arr = np.array(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16), _U16
        return _minmax(arr.astype(np.float64)), _FLOAT
    if mode == "F":
        arr = np.array(im, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ChexError(f"{path}: floating-point image contains NaN or infinite values")
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr.astype(np.float32), _FLOAT
        return _minmax(arr), _FLOAT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gray = im.convert("L")
    except ValueError as e:
        raise ChexError(
            f"{path}: unsupported image mode {mode!r} ({_one_line(e)})"
        ) from None
    return np.array(gray, dtype=np.uint8), _U8


def _minmax(arr: np.ndarray) -> np.ndarray:
    """Min-max scale to float32 [0, 1] (all zeros for a constant image)."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- DICOM

# transfer syntax UID -> pip packages that provide a decoder
_DICOM_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",  # JPEG extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE lossless
}


def _decoder_error(path: Path, tsuid) -> ChexError:
    pkgs = _DICOM_DECODER_PACKAGES.get(str(tsuid), "python-gdcm")
    name = getattr(tsuid, "name", "") or str(tsuid)
    return ChexError(
        f"{path}: cannot decode the DICOM pixel data ({name}, transfer syntax {tsuid}):"
        f" no decoder is installed; install one with: pip install {pkgs}"
    )


def _looks_like_missing_decoder(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, NotImplementedError) or any(
        key in text
        for key in ("missing", "dependenc", "plugin", "handler", "not supported", "no pixel data handler")
    )


def _dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of a forced read
            return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as e:
        raise ChexError(f"{path}: not a readable DICOM file ({_one_line(e)})") from None


def _dicom_rows_cols(ds) -> tuple[int | None, int | None]:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None, None
    return rows, cols


def _read_dicom(path: Path, max_pixels: int | None) -> np.ndarray:
    ds = _dcmread(path)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not _has_dicm_magic(path) and "SOPClassUID" not in ds:
            raise ChexError(f"{path}: not a valid DICOM file (no DICM header, no image data)")
        raise ChexError(f"{path}: the DICOM file has no pixel data (not an image)")
    rows, cols = _dicom_rows_cols(ds)
    if rows is not None:
        check_pixel_count(path, cols, rows, max_pixels)

    meta = getattr(ds, "file_meta", None)
    tsuid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    compressed = bool(tsuid is not None and getattr(tsuid, "is_compressed", False))
    if compressed:  # ask up front whether a decoder plugin is usable
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(tsuid)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            raise _decoder_error(path, tsuid)

    try:
        arr = _first_frame(ds)
    except ChexError:
        raise
    except MemoryError:
        raise ChexError(f"{path}: not enough memory to decode the DICOM pixel data") from None
    except Exception as e:
        if compressed and _looks_like_missing_decoder(e):
            raise _decoder_error(path, tsuid) from None
        raise ChexError(
            f"{path}: cannot decode the DICOM pixel data ({_one_line(e)})"
        ) from None

    try:
        return _dicom_to_unit(arr, ds)
    except ChexError:
        raise
    except Exception as e:
        raise ChexError(
            f"{path}: cannot apply the DICOM intensity transforms ({_one_line(e)})"
        ) from None


def _first_frame(ds) -> np.ndarray:
    """Decoded pixel array of the first frame: (rows, cols) or (rows, cols, samples)."""
    from pydicom.pixels import pixel_array

    n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    return pixel_array(ds, index=0) if n_frames > 1 else pixel_array(ds)


def _frame_attributes(ds):
    """A dataset view with frame-0 rescale / window values of an enhanced multi-frame file.

    Enhanced (multi-frame) objects keep RescaleSlope/Intercept and WindowCenter/Width in
    the shared or per-frame functional groups instead of the top level.
    """
    from pydicom.dataset import Dataset

    wanted = {
        "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
        "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    }
    found = {}
    for groups_name in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = getattr(ds, groups_name, None)
        if not groups:
            continue
        group = groups[0]
        for seq_name, keys in wanted.items():
            seq = getattr(group, seq_name, None)
            if not seq:
                continue
            for key in keys:
                if key in seq[0] and key not in found:
                    found[key] = seq[0][key].value
    if not found or any(k in ds for k in ("RescaleSlope", "WindowCenter")):
        return ds
    view = Dataset()
    for elem in ds:
        if elem.keyword not in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            view.add(elem)
    for key, value in found.items():
        setattr(view, key, value)
    return view


def _dicom_to_unit(arr: np.ndarray, ds) -> np.ndarray:
    """Modality LUT, VOI LUT, min-max to [0, 1], MONOCHROME1 inversion -> float32 (H, W)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        samples = arr.shape[-1] if arr.ndim == 3 else 1
    if samples > 1 or arr.ndim == 3:
        rgb = arr.astype(np.float64)[..., :3]
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return _minmax(gray)

    view = _frame_attributes(ds)
    out = apply_modality_lut(arr, view)
    out = apply_voi_lut(out, view)
    out = np.asarray(out, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError("pixel data contains NaN or infinite values")
    unit = _minmax(out)
    if photometric == "MONOCHROME1":
        unit = (1.0 - unit).astype(np.float32)
    return unit

