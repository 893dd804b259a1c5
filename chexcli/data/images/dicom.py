"""DICOM through pydicom: first frame, modality LUT, VOI LUT / windowing, min-max to [0, 1],
inverted for ``MONOCHROME1`` (docs/data.md#image-readers)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from chexcli.data.images.arrays import minmax
from chexcli.data.images.files import has_dicm_magic, one_line
from chexcli.data.images.limits import check_pixel_count
from chexcli.errors import ChexError

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


def dcmread(path: Path, stop_before_pixels: bool = False):
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about every oddity of a forced read
            return pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception as e:
        raise ChexError(f"{path}: not a readable DICOM file ({one_line(e)})") from None


def dicom_rows_cols(ds) -> tuple[int | None, int | None]:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return None, None
    return rows, cols


def read_dicom(path: Path, max_pixels: int | None) -> np.ndarray:
    ds = dcmread(path)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if not has_dicm_magic(path) and "SOPClassUID" not in ds:
            raise ChexError(f"{path}: not a valid DICOM file (no DICM header, no image data)")
        raise ChexError(f"{path}: the DICOM file has no pixel data (not an image)")
    rows, cols = dicom_rows_cols(ds)
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
            f"{path}: cannot decode the DICOM pixel data ({one_line(e)})"
        ) from None

    try:
        return _dicom_to_unit(arr, ds)
    except ChexError:
        raise
    except Exception as e:
        raise ChexError(
            f"{path}: cannot apply the DICOM intensity transforms ({one_line(e)})"
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
        return minmax(gray)

    view = _frame_attributes(ds)
    out = apply_modality_lut(arr, view)
    out = apply_voi_lut(out, view)
    out = np.asarray(out, dtype=np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError("pixel data contains NaN or infinite values")
    unit = minmax(out)
    if photometric == "MONOCHROME1":
        unit = (1.0 - unit).astype(np.float32)
    return unit

