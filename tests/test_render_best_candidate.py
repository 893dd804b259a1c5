"""A prompt that is not present still shows its most probable candidate: dashed, with its weight.

The JSON keeps `box: null, present: false`; only the annotated PNG (and its legend) changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import chexcli.render as render
from chexcli.predict import ImagePrediction, QueryResult, Region
from chexcli.predict_run import annotate_image, best_candidate, build_record, render_item, strip_pixels
from chexcli.render import DASHED_NOTE, draw_predictions, item_color

BACKGROUND = (60, 60, 60)


def absent_item(**extra) -> dict:
    item = {"label": "cardiac silhouette", "sentence": "The heart is not enlarged.", "box": None,
            "regions": [], "region_weights": [], "score": 0.14,
            "best_box": [60, 80, 200, 180], "best_weight": 0.31}
    return {**item, **extra}


def edge_pixels(arr: np.ndarray, y: int, x1: int, x2: int) -> list[tuple[int, ...]]:
    """Pixels (RGB tuples) of row `y` from column x1 to x2 (inclusive) of an (H, W, 3) array."""
    return [tuple(int(v) for v in arr[y, x]) for x in range(x1, x2 + 1)]


def legend_texts(monkeypatch) -> list[str]:
    """Every text `draw_predictions` wraps into its legend panel, recorded from now on."""
    seen: list[str] = []
    wrap = render._wrap

    def spy(text, font, width):
        seen.append(text)
        return wrap(text, font, width)

    monkeypatch.setattr(render, "_wrap", spy)
    return seen


def test_best_candidate_is_dashed_in_the_item_colour(monkeypatch):
    texts = legend_texts(monkeypatch)
    out = np.asarray(draw_predictions(Image.new("L", (256, 224), 60), [absent_item()]))
    bottom = edge_pixels(out, 180, 62, 198)  # the bottom edge, away from the tag at the top-left corner
    colour = sum(p == item_color(0) for p in bottom)
    gaps = sum(p == BACKGROUND for p in bottom)
    assert colour + gaps == len(bottom)  # nothing else on the edge
    assert colour >= len(bottom) // 3 and gaps >= len(bottom) // 3  # dashes and the gaps between them
    left = [tuple(int(v) for v in out[y, 60]) for y in range(100, 178)]
    assert item_color(0) in left and BACKGROUND in left
    assert tuple(out[130, 130]) == BACKGROUND  # inside the box: the image
    assert texts[-2] == ("1. cardiac silhouette (0.14): The heart is not enlarged. "
                         "[not present; dashed: best candidate 0.31]")
    assert texts[-1] == DASHED_NOTE  # the footnote, once, last


def test_footnote_once_and_only_with_a_dashed_box(monkeypatch):
    texts = legend_texts(monkeypatch)
    present = {"label": "left lung", "sentence": "Clear.", "box": [20, 20, 100, 120], "score": 0.9}
    draw_predictions(Image.new("L", (256, 224), 60), [absent_item(), present, absent_item(best_weight=0.2)])
    assert texts.count(DASHED_NOTE) == 1
    assert texts[-2].endswith("[not present; dashed: best candidate 0.20]")
    texts.clear()
    draw_predictions(Image.new("L", (256, 224), 60), [present, absent_item(best_box=None)])
    assert DASHED_NOTE not in texts and texts[-1].endswith("[no box]")


def test_a_present_box_stays_solid_and_wins_over_best_box():
    out = np.asarray(draw_predictions(Image.new("L", (256, 224), 60),
                                      [absent_item(box=[60, 80, 200, 180], score=0.8)]))
    assert set(edge_pixels(out, 180, 62, 198)) == {item_color(0)}  # one solid line


def prediction(weights: list[float], present: bool) -> ImagePrediction:
    """One 300 x 260 image with a text prompt whose regions have `weights`, and a box prompt."""
    regions = [Region(box=[10.0 + 20 * k, 40.0, 120.0 + 20 * k, 200.0], box_model=[0.5, 0.5, 0.2, 0.2],
                      weight=w, present=present and w > 0.5) for k, w in enumerate(weights)]
    prompt = QueryResult(type="prompt", prompt="cardiac silhouette", prompt_source="anatomy:cardiac silhouette",
                         box=[20.0, 40.0, 150.0, 210.0] if present else None, box_model=[0.5, 0.5, 0.3, 0.3],
                         score=0.2, present=present, regions=regions, sentence="The heart is not enlarged.")
    box = QueryResult(type="box", prompt=None, prompt_source=None, box=[30.0, 30.0, 90.0, 90.0],
                      box_model=[0.2, 0.2, 0.2, 0.2], score=None, present=True, sentence="A box.")
    return ImagePrediction("a.png", 260, 300, [prompt, box])


def test_an_absent_prompt_draws_its_highest_weight_region_and_its_json_keeps_box_null(tmp_path):
    gray = np.full((300, 260), 0.25)
    record = build_record(prediction([0.12, 0.31, 0.05], present=False), None, Path("a.png"), gray, "pixel")
    prompt, box = record["queries"]
    assert best_candidate(prompt) is prompt["regions"][1]  # weight 0.31
    item = render_item(prompt, "cardiac silhouette")
    assert item["box"] is None and item["best_box"] == [30.0, 40.0, 140.0, 200.0] and item["best_weight"] == 0.31
    assert best_candidate(box) is None and "best_box" not in render_item(box, "box")

    annotate_image(Path("a.png"), gray, record, tmp_path / "a.png")
    drawn = np.asarray(Image.open(tmp_path / "a.png").convert("RGB"))
    bottom = edge_pixels(drawn, 200, 32, 138)
    assert item_color(0) in bottom and (64, 64, 64) in bottom  # dashed, in the prompt's colour

    strip_pixels(record)
    line = json.loads(json.dumps(record))
    assert line["queries"][0]["box"] is None and line["queries"][0]["present"] is False
    assert set(line["queries"][0]) == {"type", "prompt", "prompt_source", "box", "box_model", "score", "present",
                                       "regions", "sentence"}  # the --json schema: nothing added
    assert set(line["queries"][0]["regions"][0]) == {"box", "box_model", "weight", "present"}


def test_a_present_prompt_has_no_best_candidate():
    record = build_record(prediction([0.7, 0.31], present=True), None, Path("a.png"), np.zeros((300, 260)), "pixel")
    assert best_candidate(record["queries"][0]) is None
    assert "best_box" not in render_item(record["queries"][0], "cardiac silhouette")
