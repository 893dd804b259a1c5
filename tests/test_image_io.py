"""Tests of chexcli.data.images.readers: every supported format and the error messages."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chexcli.data.images.readers import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    check_image_size,
    check_pixel_count,
    image_size,
    is_dicom,
    max_image_pixels,
    read_image,
    read_image_uint8,
)
from chexcli.errors import ChexError

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid  # noqa: E402

RNG = np.random.default_rng(0)


def _gray8(h=20, w=30):
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def _rgb8(h=20, w=30):
    return RNG.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _assert_one_line_error(excinfo, path, *words):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ":")
    for word in words:
        assert word.lower() in msg.lower(), msg


# --------------------------------------------------------------------------- 8-bit PIL


def test_png_l_exact(tmp_path):
    a = _gray8()
    p = tmp_path / "a.png"
    Image.fromarray(a, "L").save(p)
    x = read_image(p)
    assert x.dtype == np.float32 and x.shape == a.shape
    np.testing.assert_array_equal(x, a.astype(np.float32) / 255)
    np.testing.assert_array_equal(read_image_uint8(p), a)
    assert read_image(str(p)).shape == a.shape  # str paths work too


def test_jpeg_l_matches_pil(tmp_path):
    a = _gray8(32, 40)
    p = tmp_path / "a.jpg"
    Image.fromarray(a, "L").save(p, quality=90)
    ref = np.asarray(Image.open(p).convert("L"))
    np.testing.assert_array_equal(read_image_uint8(p), ref)
    np.testing.assert_array_equal(read_image(p), ref.astype(np.float32) / 255)


def test_jpeg_rgb_matches_pil_convert(tmp_path):
    p = tmp_path / "c.jpeg"
    Image.fromarray(_rgb8(32, 40), "RGB").save(p, quality=95)
    ref = np.asarray(Image.open(p).convert("L"))
    np.testing.assert_array_equal(read_image_uint8(p), ref)


def test_png_rgb_is_pil_luma_with_integer_rounding(tmp_path):
    a = _rgb8()
    a[0, :4] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]
    p = tmp_path / "rgb.png"
    Image.fromarray(a, "RGB").save(p)
    got = read_image_uint8(p)
    np.testing.assert_array_equal(got, np.asarray(Image.fromarray(a, "RGB").convert("L")))
    # Pillow's fixed-point ITU-R 601-2 luma: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
    r, g, b = (a[..., i].astype(np.int64) for i in range(3))
    expected = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(read_image(p), expected.astype(np.float32) / 255)
    assert list(got[0, :4]) == [76, 150, 29, 255]


def test_rgba_drops_alpha(tmp_path):
    rgb = _rgb8()
    alpha = RNG.integers(0, 256, size=rgb.shape[:2], dtype=np.uint8)
    alpha[0, 0] = 0
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p)
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(read_image_uint8(p), expected)


def test_la_drops_alpha(tmp_path):
    g = _gray8()
    p = tmp_path / "la.png"
    Image.fromarray(np.dstack([g, np.zeros_like(g)]), "LA").save(p)
    assert Image.open(p).mode == "LA"
    np.testing.assert_array_equal(read_image_uint8(p), g)


def test_palette_png(tmp_path):
    im = Image.fromarray(_rgb8(), "RGB").quantize(colors=16)
    assert im.mode == "P"
    p = tmp_path / "p.png"
    im.save(p)
    expected = np.asarray(Image.open(p).convert("L"))
    np.testing.assert_array_equal(read_image_uint8(p), expected)


def test_palette_with_transparency(tmp_path):
    im = Image.fromarray(_rgb8(), "RGB").quantize(colors=8)
    p = tmp_path / "pt.png"
    im.save(p, transparency=0)
    expected = np.asarray(Image.open(p).convert("L"))
    np.testing.assert_array_equal(read_image_uint8(p), expected)


def test_bilevel_png(tmp_path):
    bits = RNG.integers(0, 2, size=(16, 24)).astype(bool)
    p = tmp_path / "b.png"
    Image.fromarray(bits).convert("1").save(p)
    np.testing.assert_array_equal(read_image_uint8(p), np.where(bits, 255, 0).astype(np.uint8))


# --------------------------------------------------------------------------- 16-bit


def test_png_16bit_keeps_precision(tmp_path):
    a = RNG.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    a[0, 0], a[0, 1], a[0, 2], a[0, 3] = 0, 65535, 1, 2
    p = tmp_path / "a16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    x = read_image(p)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, a.astype(np.float32) / 65535)
    assert x[0, 0] == 0.0 and x[0, 1] == 1.0 and 0 < x[0, 2] < x[0, 3]
    u8 = read_image_uint8(p)
    np.testing.assert_array_equal(u8, np.rint(a.astype(np.float64) * 255 / 65535).astype(np.uint8))


@pytest.mark.parametrize("suffix,fmt,named", [
    (".tif", "TIFF", "TIFF"), (".bmp", "BMP", "BMP"), (".gif", "GIF", "GIF"), (".webp", "WEBP", "WEBP"),
    (".ico", "ICO", "ICO"), (".ppm", "PPM", "PPM"), (".png", "TIFF", "TIFF"),  # the content decides, not the name
])
def test_formats_outside_the_allow_list_are_refused_by_name(tmp_path, suffix, fmt, named):
    p = tmp_path / f"x{suffix}"
    try:
        Image.fromarray(_rgb8(16, 16), "RGB").save(p, format=fmt)
    except (KeyError, OSError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    for reader in (read_image, read_image_uint8, image_size):
        with pytest.raises(ChexError) as ei:
            reader(p)
        _assert_one_line_error(ei, p, f"{named} images are not supported (supported: PNG, JPEG, DICOM)")


def test_eps_never_reaches_ghostscript(tmp_path, monkeypatch):
    p = tmp_path / "x.eps"
    p.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    import subprocess
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a subprocess was started"))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: pytest.fail("a subprocess was started"))
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "EPS images are not supported")


# --------------------------------------------------------------------------- DICOM


def _write_dicom(
    path,
    pixels,
    *,
    photometric="MONOCHROME2",
    bits_stored=None,
    signed=False,
    n_frames=None,
    slope=None,
    intercept=None,
    center=None,
    width=None,
    transfer_syntax=ExplicitVRLittleEndian,
    pixel_bytes=None,
    with_pixels=True,
):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if with_pixels:
        pixels = np.asarray(pixels)
        rows, cols = pixels.shape[-2:] if pixels.ndim == 2 or n_frames else pixels.shape[:2]
        bits = pixels.dtype.itemsize * 8
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 3 if (pixels.ndim == 3 and not n_frames) else 1
        ds.PhotometricInterpretation = photometric
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = bits
        ds.BitsStored = bits_stored or bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if n_frames:
            ds.NumberOfFrames = n_frames
        ds.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
        ds.RescaleType = "US"
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _minmax(a):
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


def test_dicom_monochrome2_minmax(tmp_path):
    a = RNG.integers(100, 4000, size=(20, 30), dtype=np.uint16)
    p = _write_dicom(tmp_path / "m2.dcm", a, bits_stored=12)
    x = read_image(p)
    assert x.dtype == np.float32 and x.shape == (20, 30)
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x, _minmax(a), atol=1e-6)
    np.testing.assert_array_equal(read_image_uint8(p), np.rint(x.astype(np.float64) * 255).astype(np.uint8))


def test_dicom_monochrome1_inverted(tmp_path):
    a = RNG.integers(0, 4096, size=(20, 30), dtype=np.uint16)
    p = _write_dicom(tmp_path / "m1.dcm", a, photometric="MONOCHROME1", bits_stored=12)
    np.testing.assert_allclose(read_image(p), 1.0 - _minmax(a), atol=1e-6)


def test_dicom_8bit(tmp_path):
    a = RNG.integers(10, 200, size=(20, 30), dtype=np.uint8)
    p = _write_dicom(tmp_path / "u8.dcm", a)
    np.testing.assert_allclose(read_image(p), _minmax(a), atol=1e-6)


def test_dicom_rescale_negative_slope_is_applied(tmp_path):
    # A negative slope flips the intensities: proves the modality LUT is applied.
    a = RNG.integers(0, 1000, size=(20, 30), dtype=np.uint16)
    p = _write_dicom(tmp_path / "neg.dcm", a, slope=-1, intercept=1000)
    np.testing.assert_allclose(read_image(p), 1.0 - _minmax(a), atol=1e-6)


def test_dicom_rescale_and_window(tmp_path):
    # stored 0..1000 -> HU = 2 * v - 1000 in [-1000, 1000]; window [-500, 500]
    a = RNG.integers(0, 1001, size=(24, 24), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 1000  # make sure values fall on both sides of the window
    p = _write_dicom(tmp_path / "win.dcm", a, slope=2, intercept=-1000, center=0, width=1000)
    hu = a.astype(np.float64) * 2 - 1000
    c, w = 0.0, 1000.0
    expected = np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # DICOM linear window
    x = read_image(p)
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert (x == 0).sum() > 0 and (x == 1).sum() > 0


def test_dicom_window_without_rescale(tmp_path):
    a = RNG.integers(0, 4096, size=(24, 24), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 4095
    p = _write_dicom(tmp_path / "w.dcm", a, bits_stored=12, center=2048, width=1024)
    expected = np.clip((a - (2048 - 0.5)) / (1024 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(read_image(p), expected, atol=1e-5)


def test_dicom_signed(tmp_path):
    a = RNG.integers(-1000, 1000, size=(20, 30)).astype(np.int16)
    p = _write_dicom(tmp_path / "s.dcm", a, signed=True)
    np.testing.assert_allclose(read_image(p), _minmax(a), atol=1e-6)


def test_dicom_multiframe_takes_first_frame(tmp_path):
    frames = RNG.integers(0, 4096, size=(3, 16, 20), dtype=np.uint16)
    frames[1:] = 4095 - frames[:1]  # other frames differ
    p = _write_dicom(tmp_path / "mf.dcm", frames, n_frames=3, bits_stored=12)
    x = read_image(p)
    assert x.shape == (16, 20)
    np.testing.assert_allclose(x, _minmax(frames[0]), atol=1e-6)


def test_dicom_rgb(tmp_path):
    rgb = _rgb8(16, 20)
    p = _write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(read_image(p), _minmax(gray), atol=1e-6)


def test_dicom_detected_by_magic_without_suffix(tmp_path):
    a = RNG.integers(0, 4096, size=(8, 9), dtype=np.uint16)
    p = _write_dicom(tmp_path / "image_without_suffix", a)
    assert is_dicom(p)
    np.testing.assert_allclose(read_image(p), _minmax(a), atol=1e-6)
    png = tmp_path / "x.png"
    Image.fromarray(_gray8(), "L").save(png)
    assert not is_dicom(png)


def test_dicom_constant_image_is_zero(tmp_path):
    p = _write_dicom(tmp_path / "c.dcm", np.full((8, 8), 7, dtype=np.uint16))
    np.testing.assert_array_equal(read_image(p), np.zeros((8, 8), np.float32))


def test_dicom_missing_decoder_names_package(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    from pydicom.encaps import encapsulate

    a = np.zeros((8, 8), dtype=np.uint16)
    p = _write_dicom(
        tmp_path / "jls.dcm",
        a,
        transfer_syntax=JPEGLSLossless,
        pixel_bytes=encapsulate([b"\xff\xd8\xff\xf7" + b"\0" * 30]),
    )
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "JPEG-LS", "pip install", "pylibjpeg")


def test_dicom_without_pixel_data(tmp_path):
    p = _write_dicom(tmp_path / "sr.dcm", None, with_pixels=False)
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "no pixel data")


def test_dicom_truncated_pixel_data(tmp_path):
    a = RNG.integers(0, 4096, size=(20, 30), dtype=np.uint16)
    p = _write_dicom(tmp_path / "short.dcm", a, pixel_bytes=a.tobytes()[:100])
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "DICOM")


def test_dcm_suffix_with_garbage(tmp_path):
    p = tmp_path / "junk.dcm"
    p.write_bytes(b"this is not a dicom file at all" * 3)
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "not a valid DICOM")


def test_png_named_dcm(tmp_path):
    p = tmp_path / "actually_png.dcm"
    Image.fromarray(_gray8(), "L").save(p, format="PNG")
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "DICOM")


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "not found")


def test_directory(tmp_path):
    with pytest.raises(ChexError) as ei:
        read_image_uint8(tmp_path)
    _assert_one_line_error(ei, tmp_path, "directory")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "empty")


def test_unsupported_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello\nworld\n")
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "not a recognised image")


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_image(tmp_path, suffix, fmt):
    p = tmp_path / f"t{suffix}"
    Image.fromarray(_rgb8(64, 64), "RGB").save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p, "corrupt")
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


def test_corrupt_png_body(tmp_path):
    p = tmp_path / "bad.png"
    Image.fromarray(_gray8(64, 64), "L").save(p)
    data = bytearray(p.read_bytes())
    for i in range(60, len(data) - 20):
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    with pytest.raises(ChexError) as ei:
        read_image(p)
    _assert_one_line_error(ei, p)


def test_unreadable_file(tmp_path):
    import os

    p = tmp_path / "locked.png"
    Image.fromarray(_gray8(), "L").save(p)
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):  # running as root
            pytest.skip("permissions are not enforced for this user")
        with pytest.raises(ChexError) as ei:
            read_image(p)
        _assert_one_line_error(ei, p, "permission")
    finally:
        os.chmod(p, 0o644)


# --------------------------------------------------------------------------- pixel-count limit


def _png_header(path, width, height, depth=8):
    """A PNG that declares width x height but holds almost no data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return path


def test_limit_from_environment(monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS
    for text, value in [("1000", 1000), ("200_000_000", 200_000_000), ("1e8", 100_000_000), ("0", None),
                        ("none", None)]:
        monkeypatch.setenv(MAX_PIXELS_ENV, text)
        assert max_image_pixels() == value
    for text in ("-5", "lots", "1.5x"):
        monkeypatch.setenv(MAX_PIXELS_ENV, text)
        with pytest.raises(ChexError, match=MAX_PIXELS_ENV):
            max_image_pixels()


def test_size_from_header_only(tmp_path):
    big = _png_header(tmp_path / "big.png", 15000, 15000, 16)  # 0.2 kB declaring 225 megapixels
    assert image_size(big) == (15000, 15000)
    with pytest.raises(ChexError) as e:
        check_image_size(big)
    _assert_one_line_error(e, big, "15000 x 15000", "exceeds the limit", MAX_PIXELS_ENV)
    assert check_image_size(big, max_pixels=0) == (15000, 15000)  # 0: no limit
    d = _write_dicom(tmp_path / "a.dcm", np.zeros((20, 30), dtype=np.uint16))
    assert image_size(d) == (30, 20)
    with pytest.raises(ChexError, match="20 x 30|30 x 20"):
        check_pixel_count(d, 30, 20, max_pixels=599)
    check_pixel_count(d, 30, 20, max_pixels=600)


@pytest.mark.parametrize("reader", [read_image, read_image_uint8])
def test_every_reader_refuses_before_decoding(tmp_path, reader, monkeypatch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning: PIL's own check is replaced
        big = _png_header(tmp_path / "big.png", 10000, 10000)  # over PIL's warning threshold
        with pytest.raises(ChexError, match="exceeds the limit"):
            reader(big)
        d = tmp_path / "huge.dcm"
        _write_dicom(d, np.zeros((2, 2), dtype=np.uint16), pixel_bytes=b"\0" * 8)
        ds = pydicom.dcmread(d)
        ds.Rows = ds.Columns = 14000  # declares 196 megapixels, holds 8 bytes
        ds.save_as(d)
        with pytest.raises(ChexError, match="huge.dcm: image of 14000 x 14000"):
            reader(d)
        jpg = tmp_path / "a.jpg"
        Image.fromarray(_gray8(40, 50)).save(jpg)
        monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
        with pytest.raises(ChexError, match="a.jpg: image of 50 x 40"):
            reader(jpg)
        assert reader(jpg, max_pixels=2000).shape == (40, 50)
