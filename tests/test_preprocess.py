"""Tests of chexcli.model.preprocess: rect_center transform, INTER_AREA cache step, boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chexcli.errors import ChexError
from chexcli.model.preprocess import (
    CropInfo,
    area_downsample_256,
    center_crop_square,
    crop_info,
    model_boxes_to_pixels,
    normalize,
    pixel_boxes_to_model,
    preprocess_batch,
    preprocess_image,
    resize_area,
    resize_bilinear,
    validate_pixel_box,
)

PARITY = Path(__file__).resolve().parents[1].parent / "shared/reference/parity"
RNG = np.random.default_rng(1)


def _img(h, w):
    return RNG.random((h, w), dtype=np.float32)


# --------------------------------------------------------------------------- crop


@pytest.mark.parametrize(
    "h,w,side,y0,x0",
    [(320, 256, 256, 32, 0), (250, 301, 250, 0, 25), (224, 224, 224, 0, 0), (480, 520, 480, 0, 20), (5, 8, 5, 0, 1)],
)
def test_crop_info(h, w, side, y0, x0):
    info = crop_info(h, w)
    assert info == CropInfo(height=h, width=w, side=side, y0=y0, x0=x0)
    assert info.offsets == (y0, x0)
    img = _img(h, w)
    crop = center_crop_square(img)
    np.testing.assert_array_equal(crop, img[y0 : y0 + side, x0 : x0 + side])


def test_crop_info_rejects_empty():
    with pytest.raises(ChexError):
        crop_info(0, 10)


# --------------------------------------------------------------------------- bilinear


def _opencv_linear_reference(img, size):
    """Straightforward per-pixel INTER_LINEAR in float64 (half-pixel centres, clamped)."""
    h, w = img.shape
    out = np.zeros((size, size))

    def coord(d, n, m):
        f = (d + 0.5) * n / m - 0.5
        i = int(np.floor(f))
        t = f - i
        if i < 0:
            i, t = 0, 0.0
        if i >= n - 1:
            i, t = n - 1, 0.0
        return i, min(i + 1, n - 1), t

    for y in range(size):
        y0, y1, ty = coord(y, h, size)
        for x in range(size):
            x0, x1, tx = coord(x, w, size)
            top = img[y0, x0] * (1 - tx) + img[y0, x1] * tx
            bot = img[y1, x0] * (1 - tx) + img[y1, x1] * tx
            out[y, x] = top * (1 - ty) + bot * ty
    return out


@pytest.mark.parametrize("src,size", [(10, 7), (7, 10), (13, 13), (3, 8), (9, 4)])
def test_resize_bilinear_matches_formula(src, size):
    img = _img(src, src)
    got = resize_bilinear(img, size)
    assert got.dtype == np.float32 and got.shape == (size, size)
    np.testing.assert_allclose(got, _opencv_linear_reference(img.astype(np.float64), size), atol=2e-7)


def test_resize_bilinear_close_to_torch_interpolate():
    img = _img(256, 256)
    got = resize_bilinear(img, 224)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img)[None, None], size=(224, 224), mode="bilinear", align_corners=False, antialias=False
    )[0, 0].numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)  # torch uses float32 source coordinates


def test_resize_bilinear_identity_and_constant():
    img = _img(224, 224)
    assert resize_bilinear(img) is img or np.array_equal(resize_bilinear(img), img)
    const = np.full((300, 300), 0.375, np.float32)
    np.testing.assert_array_equal(resize_bilinear(const), np.full((224, 224), 0.375, np.float32))


def test_resize_bilinear_has_no_antialiasing():
    img = _img(896, 896)  # 4x: samples at 4d + 1.5 -> mean of pixels 4d+1 and 4d+2 only
    got = resize_bilinear(img, 224)
    sub = img.astype(np.float64)[1::4][:, 1::4], img[1::4][:, 2::4], img[2::4][:, 1::4], img[2::4][:, 2::4]
    expected = (sub[0] + sub[1] + sub[2] + sub[3]) / 4
    np.testing.assert_allclose(got, expected, atol=1e-6)


# --------------------------------------------------------------------------- normalise / pipeline


def test_normalize():
    x = np.array([0.0, 0.505, 1.0], np.float32)
    inv = np.reciprocal(np.float32(0.248), dtype=np.float32)
    np.testing.assert_array_equal(normalize(x), (x - np.float32(0.505)) * inv)
    assert normalize(x)[1] == 0.0
    t = normalize(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), normalize(x))
    np.testing.assert_allclose(normalize(x, 0.5, 0.25), (x - 0.5) / 0.25, rtol=1e-6)


def test_preprocess_image_shapes_and_uint8():
    u8 = RNG.integers(0, 256, size=(300, 260), dtype=np.uint8)
    x, info = preprocess_image(u8)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.shape == (224, 224)
    assert info == crop_info(300, 260)
    x2, _ = preprocess_image(u8.astype(np.float32) / 255)
    assert torch.equal(x, x2)
    x3, _ = preprocess_image(u8.astype(np.float32) / 255, size=112, pixel_mean=0.5, pixel_std=0.25)
    assert x3.shape == (112, 112)
    with pytest.raises(ChexError):
        preprocess_image(np.zeros((4, 4, 3), np.float32))


def test_preprocess_square_224_is_only_normalised():
    img = _img(224, 224)
    x, info = preprocess_image(img)
    np.testing.assert_array_equal(x.numpy(), normalize(img))
    assert (info.side, info.y0, info.x0) == (224, 0, 0)


def test_preprocess_batch():
    imgs = [_img(320, 256), _img(250, 301), _img(224, 224)]
    batch = preprocess_batch(imgs)
    assert batch.shape == (3, 224, 224) and batch.dtype == torch.float32
    for i, img in enumerate(imgs):
        assert torch.equal(batch[i], preprocess_image(img)[0])
    batch2, infos = preprocess_batch(imgs, return_crop_info=True)
    assert torch.equal(batch, batch2) and [i.x0 for i in infos] == [0, 25, 0]
    assert preprocess_batch([]).shape == (0, 224, 224)


# --------------------------------------------------------------------------- INTER_AREA


def _area_reference(img, out_h, out_w):
    """Exact pixel-area average (float64): what INTER_AREA computes when shrinking."""
    h, w = img.shape

    def weights(n, m):
        wm = np.zeros((m, n))
        scale = n / m
        for d in range(m):
            a, b = d * scale, (d + 1) * scale
            for s in range(int(np.floor(a)), min(int(np.ceil(b)), n)):
                wm[d, s] = max(0.0, min(b, s + 1) - max(a, s))
            wm[d] /= wm[d].sum()
        return wm

    return weights(h, out_h) @ img.astype(np.float64) @ weights(w, out_w).T


@pytest.mark.parametrize("src,dst", [((480, 520), (256, 277)), ((37, 50), (11, 13)), ((1024, 1024), (256, 256)), ((30, 20), (15, 10))])
def test_resize_area_shrinking_is_area_average(src, dst):
    img = _img(*src)
    got = resize_area(img, *dst)
    assert got.dtype == np.float32 and got.shape == dst
    np.testing.assert_allclose(got, _area_reference(img, *dst), atol=2e-6)


def test_resize_area_integer_factor_is_block_mean():
    img = _img(512, 768)
    got = resize_area(img, 256, 384)
    expected = img.astype(np.float64).reshape(256, 2, 384, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resize_area_integer_upscale_replicates():
    img = _img(6, 7)
    got = resize_area(img, 12, 14)  # OpenCV INTER_AREA upscaling by 2 = pixel replication
    np.testing.assert_array_equal(got, np.repeat(np.repeat(img, 2, axis=0), 2, axis=1))


def test_resize_area_constant_preserved():
    for shape, dst in [((250, 301), (256, 308)), ((480, 520), (256, 277))]:
        const = np.full(shape, 0.6, np.float32)
        np.testing.assert_allclose(resize_area(const, *dst), 0.6, atol=1e-6)


@pytest.mark.parametrize(
    "shape,resized",
    [((320, 256), (320, 256)), ((250, 301), (256, 308)), ((480, 520), (256, 277)), ((600, 300), (512, 256)), ((224, 224), (256, 256))],
)
def test_area_downsample_256(shape, resized):
    img = _img(*shape)
    out = area_downsample_256(img)
    assert out.shape == (256, 256) and out.dtype == np.float32
    full = resize_area(img, *resized)
    y0, x0 = (resized[0] - 256) // 2, (resized[1] - 256) // 2
    np.testing.assert_array_equal(out, full[y0 : y0 + 256, x0 : x0 + 256])


# --------------------------------------------------------------------------- boxes


def test_box_mapping_known_values():
    info = crop_info(320, 256)  # y0 = 32
    got = pixel_boxes_to_model([[0, 32, 256, 288], [64, 96, 128, 160]], info)
    np.testing.assert_allclose(got, [[0.5, 0.5, 1, 1], [0.375, 0.375, 0.25, 0.25]])
    info = crop_info(250, 301)  # x0 = 25 (integer offset, same as the pixel crop)
    got = pixel_boxes_to_model([25, 0, 275, 250], info)
    np.testing.assert_allclose(got, [[0.5, 0.5, 1, 1]])


def test_box_mapping_clips_to_crop():
    info = crop_info(320, 256)
    got = pixel_boxes_to_model([[10, 0, 100, 64], [0, 300, 50, 320]], info)
    # first: y clipped to [32, 64] -> y in [0, 0.125]; second lies below the crop -> h = 0
    np.testing.assert_allclose(got[0], [55 / 256, 0.0625, 90 / 256, 0.125])
    assert got[1, 3] == 0.0 and got[1, 1] == 1.0


@pytest.mark.parametrize("shape", [(320, 256), (250, 301), (224, 224), (480, 520), (2500, 3001)])
def test_box_round_trip(shape):
    h, w = shape
    info = crop_info(h, w)
    s = info.side
    a = RNG.uniform(0, s, size=(50, 2))
    b = RNG.uniform(0, s, size=(50, 2))
    x1, x2 = np.minimum(a[:, 0], b[:, 0]) + info.x0, np.maximum(a[:, 0], b[:, 0]) + info.x0
    y1, y2 = np.minimum(a[:, 1], b[:, 1]) + info.y0, np.maximum(a[:, 1], b[:, 1]) + info.y0
    boxes = np.stack([x1, y1, x2, y2], axis=1)
    model = pixel_boxes_to_model(boxes, info)
    assert model.shape == (50, 4) and np.all((model >= 0) & (model <= 1))
    back = model_boxes_to_pixels(model, info)
    np.testing.assert_allclose(back, boxes, atol=1e-4)
    # and model -> pixels -> model
    np.testing.assert_allclose(pixel_boxes_to_model(back, info), model, atol=1e-9)
    # tensors are accepted
    np.testing.assert_allclose(pixel_boxes_to_model(torch.from_numpy(boxes), info), model)


def test_model_boxes_to_pixels_clip():
    info = crop_info(250, 301)
    raw = model_boxes_to_pixels([[0.5, 0.5, 1.4, 1.4]], info)
    assert raw[0, 0] < 0 and raw[0, 3] > 250
    clipped = model_boxes_to_pixels([[0.5, 0.5, 1.4, 1.4]], info, clip_to_image=True)
    np.testing.assert_allclose(clipped, [[0, 0, 301, 250]])


def test_box_shape_error():
    with pytest.raises(ChexError):
        pixel_boxes_to_model([[1, 2, 3]], crop_info(10, 10))


def test_validate_pixel_box_ok():
    assert validate_pixel_box([0, 0, 256, 320], 256, 320) == (0.0, 0.0, 256.0, 320.0)
    assert validate_pixel_box((10.5, 20, 30, 40.25), 256, 320) == (10.5, 20.0, 30.0, 40.25)


@pytest.mark.parametrize(
    "box,words",
    [
        ([30, 10, 30, 40], ["x2 must be greater than x1"]),
        ([40, 10, 30, 40], ["x2 must be greater than x1"]),
        ([10, 40, 30, 40], ["y2 must be greater than y1"]),
        ([300, 10, 400, 40], ["entirely outside", "256x320"]),
        ([-50, -40, -10, -5], ["entirely outside"]),
        ([10, 300, 50, 330], ["extends outside", "256x320"]),
        ([-1, 10, 50, 40], ["extends outside"]),
        ([10, 10, float("nan"), 40], ["finite"]),
        ([1, 2, 3], ["4 values"]),
    ],
)
def test_validate_pixel_box_errors(box, words):
    with pytest.raises(ChexError) as ei:
        validate_pixel_box(box, 256, 320)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("box ")
    for word in words:
        assert word in msg, msg
    if len(box) == 4 and np.all(np.isfinite(box)):
        assert f"{box[0]:g}" in msg and f"{box[3]:g}" in msg


# --------------------------------------------------------------------------- parity


@pytest.fixture(scope="module")
def parity():
    if not (PARITY / "expected/outputs.pt").is_file():
        pytest.skip(f"reference parity fixtures not found at {PARITY}")
    from chexcli.data.images.readers import read_image

    outputs = torch.load(PARITY / "expected/outputs.pt", weights_only=True)
    meta = json.loads((PARITY / "expected/outputs.json").read_text())["preprocessing"]
    images = [read_image(PARITY / entry["file"]) for entry in meta["images"]]
    return outputs, meta, images


def test_parity_direct(parity):
    outputs, meta, images = parity
    assert tuple(meta["pixel_mean"]) == (0.505,) and tuple(meta["pixel_std"]) == (0.248,)
    for img, entry in zip(images, meta["images"]):
        assert img.shape == (entry["height"], entry["width"])
        info = crop_info(*img.shape)
        assert (info.y0, info.x0, info.side) == (
            entry["center_crop_y0"],
            entry["center_crop_x0"],
            entry["center_crop_size"],
        )
    x = preprocess_batch(images)
    expected = outputs["pre/x_direct"]
    assert x.shape == expected.shape
    err = (x - expected).abs().max().item()
    assert err <= 5e-5, err
    # image 2 is 224 x 224: no crop, no resize -> bit exact
    assert torch.equal(x[2], expected[2])


def test_parity_memmap256(parity):
    outputs, _, images = parity
    x = preprocess_batch([area_downsample_256(img) for img in images])
    expected = outputs["pre/x_memmap256"]
    err = (x - expected).abs().max().item()
    assert err <= 5e-5, err
