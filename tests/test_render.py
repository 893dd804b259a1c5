"""Rendering of predictions: size, colours, robustness."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from chexcli.errors import ChexError
from chexcli.render import MIN_PANEL_WIDTH, PALETTE, draw_predictions, item_color


def gray(w: int, h: int, value: int = 60, mode: str = "L") -> Image.Image:
    return Image.new(mode, (w, h), value)


def items_two():
    return [
        {"label": "pleural effusion", "sentence": "Small left effusion.", "box": [20, 30, 120, 150],
         "regions": [[20, 30, 80, 100], [50, 60, 120, 150]], "region_weights": [0.9, 0.3], "score": 0.8},
        {"label": "box 2", "sentence": None, "box": [150, 40, 230, 200], "score": None},
    ]


def test_output_size_and_original_untouched():
    img = gray(256, 224)
    before = np.asarray(img).copy()
    out = draw_predictions(img, items_two(), title="test")
    assert out.mode == "RGB"
    assert out.width == 256 and out.height > 224
    assert np.array_equal(np.asarray(img), before)
    # more legend lines -> taller panel
    more = draw_predictions(img, items_two() * 3, title="test")
    assert more.height > out.height


def test_box_outline_has_item_colour():
    img = gray(256, 224)
    out = np.asarray(draw_predictions(img, items_two()))
    # left edge of box 1 (x=20), away from the tag and the region lines
    assert tuple(out[140, 20]) == item_color(0)
    # bottom edge of box 2 (y=200)
    assert tuple(out[200, 190]) == item_color(1)
    # a pixel far from every box keeps the image value
    assert tuple(out[215, 5]) == (60, 60, 60)
    # legend swatches use the same colours
    legend = out[224:]
    for c in (item_color(0), item_color(1)):
        assert np.any(np.all(legend == np.array(c, dtype=np.uint8), axis=-1))


def test_palette_cycles_and_distinct():
    assert len(set(PALETTE)) == len(PALETTE) >= 6
    assert item_color(len(PALETTE)) == item_color(0)


def test_none_boxes_empty_lists_and_title_only():
    img = gray(224, 224)
    items = [
        {"label": "pneumothorax", "sentence": None, "box": None, "score": 0.1},
        {"label": "x", "sentence": "s", "box": None, "regions": [], "score": None},
        {"label": "only regions", "sentence": None, "box": None, "regions": [[10, 10, 50, 50]]},
    ]
    out = draw_predictions(img, items)
    assert out.width == 224 and out.height > 224
    # no box drawn: image area unchanged except the dashed region of item 3
    arr = np.asarray(out)[:224]
    assert tuple(arr[150, 150]) == (60, 60, 60)
    empty = draw_predictions(img, [])
    assert empty.height > 224
    assert draw_predictions(img, [], title="nothing found").height >= empty.height


def test_tiny_and_huge_images():
    tiny = draw_predictions(gray(12, 9), items_two(), title="tiny")
    assert tiny.width == MIN_PANEL_WIDTH and tiny.height > 9
    huge = draw_predictions(gray(3000, 2500), [
        {"label": "big", "sentence": "A long sentence " * 20, "box": [100, 100, 2900, 2400], "score": 0.5}
    ])
    assert huge.width == 3000 and huge.height > 2500
    arr = np.asarray(huge)
    # outline is scaled: several pixels wide
    assert all(tuple(arr[1000, x]) == item_color(0) for x in range(100, 106))


def test_image_modes():
    for img in (
        gray(64, 64, mode="RGB", value=(10, 20, 30)),
        gray(64, 64, mode="RGBA", value=(10, 20, 30, 255)),
        Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7),
        Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)),
    ):
        out = draw_predictions(img, [{"label": "a", "sentence": "b", "box": [5, 5, 40, 40], "score": 1.0}])
        assert out.mode == "RGB" and out.height > 64
    # 16-bit input is windowed to the full 8-bit range
    img16 = Image.fromarray((np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7))
    arr = np.asarray(draw_predictions(img16, []))[:64]
    assert arr.min() == 0 and arr.max() == 255


def test_boxes_are_clipped_and_bad_input_rejected():
    img = gray(100, 100)
    out = draw_predictions(img, [{"label": "a", "sentence": None, "box": [-50, 20, 500, 60], "score": None}])
    assert tuple(np.asarray(out)[40, 0]) == item_color(0)
    # NaN boxes are skipped
    draw_predictions(img, [{"label": "a", "sentence": None, "box": [float("nan")] * 4, "score": None}])
    with pytest.raises(ChexError):
        draw_predictions(img, [{"label": "a", "box": [1, 2, 3]}])
    with pytest.raises(ChexError):
        draw_predictions(img, [{"label": "a", "box": None, "regions": [[1, 2, 3, 4]], "region_weights": [0.1, 0.2]}])
    with pytest.raises(ChexError):
        draw_predictions(img, ["not a dict"])
    with pytest.raises(ChexError):
        draw_predictions("not an image", [])


def test_png_round_trip(tmp_path):
    out = draw_predictions(gray(224, 224), items_two(), title="t")
    path = tmp_path / "pred.png"
    out.save(path)
    assert Image.open(path).size == out.size
