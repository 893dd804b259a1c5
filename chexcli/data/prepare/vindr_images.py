"""VinDr-CXR DICOMs -> histogram-equalised 8-bit images, converted like the reference
(docs/data.md#vindr-cxr) and resized straight into the image cache."""

from __future__ import annotations

import numpy as np

from chexcli.data.images.cache_loaders import array_for_cache
from chexcli.data.images.limits import check_pixel_count
from chexcli.errors import ChexError


def equalize_hist_uint8(img: np.ndarray) -> np.ndarray:
    """Reference conversion: /255, histogram equalisation (256 bins over the image range), *255, truncate."""
    x = img.astype(np.float64) / 255.0
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.full(img.shape, 255, dtype=np.uint8)  # cdf is 1 everywhere
    hist, edges = np.histogram(x, bins=256, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(hist).astype(np.float64)
    cdf /= cdf[-1]
    out = np.interp(x.ravel(), centers, cdf).reshape(x.shape)
    return (out * 255).astype(np.uint8)


def dicom_to_uint8(path: str) -> np.ndarray:
    """VinDr DICOM -> equalised uint8 (H, W): raw stored values, MONOCHROME1 inverted with the
    image maximum, min-max to 8 bit (truncated) unless already uint8, histogram equalisation."""
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(path)
    check_pixel_count(path, int(ds.Columns), int(ds.Rows))  # before anything is decoded
    try:
        arr = pixel_array(ds, index=0) if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    except Exception as err:  # noqa: BLE001 - missing decoder plugins raise various types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise ChexError(f"cannot decode pixel data ({name}): {err}. Install a decoder plugin, e.g. "
                        "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
                        "`pip install python-gdcm`") from None
    if arr.ndim == 3:  # colour: luminance
        arr = arr[..., :3].mean(axis=-1)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        arr = arr.max() - arr
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        arr = a.astype(np.uint8)
    return equalize_hist_uint8(arr)


def load_vindr_cached(path: str, side: int):
    """Cache loader (picklable): DICOM -> equalised uint8 -> resized crop; returns (img, H, W)."""
    img = dicom_to_uint8(path)
    return array_for_cache(img, side), int(img.shape[0]), int(img.shape[1])
