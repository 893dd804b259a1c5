"""Draw predicted boxes, regions and sentences onto an image, with a legend panel below it.

`draw_predictions` never modifies its input: it draws on an RGB copy at the original
size and appends a white legend panel (one wrapped line group per item). Item dicts:

* ``label``: prompt text or e.g. ``"box 1"``
* ``sentence``: generated sentence or ``None``
* ``box``: ``[x1, y1, x2, y2]`` in pixels of ``image`` or ``None`` (absent)
* ``regions``: optional list of ``[x1, y1, x2, y2]`` (multiregion candidates), drawn
  thinner and dashed, more transparent the lower their ``region_weights`` entry
* ``region_weights``: optional list of floats in [0, 1], one per region
* ``score``: float or ``None``
* ``best_box``: optional ``[x1, y1, x2, y2]`` in pixels, used only when ``box`` is ``None``:
  the most probable candidate of a prompt none of whose candidates is present, drawn
  dashed in the item's colour and tagged with ``best_weight`` (a float in [0, 1]); the
  legend then ends with a footnote saying what a dashed box means
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from chexcli.errors import ChexError

#: Okabe-Ito colour-blind-safe palette (black left out: invisible on X-rays), then cycled
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
)
#: narrow images get a legend panel at least this wide (the image stays at the left)
MIN_PANEL_WIDTH = 200
_TEXT = (20, 20, 20)
_MUTED = (110, 110, 110)
#: the legend's last line when a dashed best candidate is drawn
DASHED_NOTE = ("Dashed box: a prompt's most probable region, with its weight; "
               "it is below the presence threshold, so the prompt is not present.")


def item_color(index: int) -> tuple[int, int, int]:
    """Colour of the ``index``-th item (cycling through :data:`PALETTE`)."""
    return PALETTE[index % len(PALETTE)]


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        scaled = (np.nan_to_num(arr, nan=lo) - lo) / (hi - lo if hi > lo else 1.0)
        gray = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # no FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _text_width(font, text: str) -> float:
    return font.getlength(text) if text else 0.0


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag|y")
    return max(1, int(math.ceil(bottom - min(top, 0))))


def _wrap(text: str, font, width: float) -> list[str]:
    """Greedy word wrap by pixel width; words longer than a line are split."""
    width = max(width, _text_width(font, "M"))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = word if not current else f"{current} {word}"
            if _text_width(font, candidate) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            current = ""
            while _text_width(font, word) > width:  # hard-break an over-long word
                cut = len(word)
                while cut > 1 and _text_width(font, word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def _coords(value: Any, what: str, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    if value is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ChexError(f"{what} must be [x1, y1, x2, y2] in pixels, got {value!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    w, h = size
    x1, x2 = sorted((min(max(x1, 0.0), w - 1.0), min(max(x2, 0.0), w - 1.0)))
    y1, y2 = sorted((min(max(y1, 0.0), h - 1.0), min(max(y2, 0.0), h - 1.0)))
    return x1, y1, x2, y2


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box, fill, width: int, dash: int) -> None:
    x1, y1, x2, y2 = box
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = math.hypot(bx - ax, by - ay)
        if length < 1:
            continue
        step = 0.0
        while step < length:
            end = min(step + dash, length)
            draw.line(
                [
                    (ax + (bx - ax) * step / length, ay + (by - ay) * step / length),
                    (ax + (bx - ax) * end / length, ay + (by - ay) * end / length),
                ],
                fill=fill,
                width=width,
            )
            step += 2 * dash


def _contrast_text(color: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _legend_text(index: int, item: dict) -> str:
    label = str(item.get("label") or f"item {index + 1}")
    score = item.get("score")
    head = f"{index + 1}. {label}"
    if score is not None:
        head += f" ({float(score):.2f})"
    sentence = item.get("sentence")
    if sentence:
        head += f": {str(sentence).strip()}"
    if item.get("box") is None and item.get("best_box") is not None:
        head += f" [not present; dashed: best candidate {_best_weight(item)}]"
    elif item.get("box") is None and not item.get("regions"):
        head += " [no box]"
    return head


def _best_weight(item: dict) -> str:
    """The weight of an item's best candidate as drawn and listed, e.g. "0.31"."""
    return f"{float(item.get('best_weight') or 0.0):.2f}"


def _best_candidate(item: dict, index: int, size: tuple[int, int]):
    """The dashed best candidate of an item without a box: (x1, y1, x2, y2) clipped to ``size``, or None."""
    if item.get("box") is not None:
        return None
    return _coords(item.get("best_box"), f"item {index + 1} best_box", size)


def draw_predictions(
    image: Image.Image, items: Sequence[dict], title: str | None = None
) -> Image.Image:
    """Return a new RGB image: ``image`` with item boxes drawn, plus a legend panel below.

    The result is ``max(W, 200)`` wide and taller than ``image`` by the legend height.
    """
    if not isinstance(image, Image.Image):
        raise ChexError(f"draw_predictions needs a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ChexError("cannot draw on an empty image")
    items = list(items or [])
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ChexError(f"prediction item {i + 1} must be a dict, got {type(item).__name__}")

    base = _to_rgb(image)
    w, h = base.size
    longest = max(w, h)
    line_w = max(1, round(longest / 250)) if longest >= 100 else 1
    font_px = int(min(max(round(longest / 36), 12), 160))
    font = _font(font_px)

    # ---- boxes and regions on a transparent overlay (regions fade with their weight)
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    region_w = max(1, line_w // 2)
    tags = []  # (item index, box, text after the label: the weight of a dashed best candidate)
    dashed_drawn = False
    for i, item in enumerate(items):
        color = item_color(i)
        regions = item.get("regions") or []
        weights = item.get("region_weights")
        if weights is not None and len(weights) != len(regions):
            raise ChexError(
                f"item {i + 1}: {len(weights)} region_weights for {len(regions)} regions"
            )
        for j, region in enumerate(regions):
            r = _coords(region, f"item {i + 1} region {j + 1}", base.size)
            if r is None:
                continue
            wgt = 1.0 if weights is None else float(weights[j])
            alpha = int(round(255 * (0.3 + 0.7 * min(max(wgt, 0.0), 1.0))))
            _dashed_rectangle(draw, r, color + (alpha,), region_w, dash=max(3, 3 * line_w))
        box = _coords(item.get("box"), f"item {i + 1} box", base.size)
        if box is not None:
            draw.rectangle(box, outline=color + (255,), width=line_w)
            tags.append((i, box, ""))
        best = _best_candidate(item, i, base.size)
        if best is not None:
            _dashed_rectangle(draw, best, color + (255,), line_w, dash=max(4, 4 * line_w))
            tags.append((i, best, f" {_best_weight(item)}"))
            dashed_drawn = True
    out = Image.alpha_composite(base.convert("RGBA"), overlay).convert("RGB")

    # ---- label tags at the top-left box corner (above the box when there is room)
    draw = ImageDraw.Draw(out)
    tag_font = _font(max(10, int(font_px * 0.85)))
    pad = max(1, font_px // 6)
    for i, (x1, y1, x2, y2), suffix in tags:
        color = item_color(i)
        text = f"{i + 1} {_short(str(items[i].get('label') or ''), 28)}".strip() + suffix
        tw = _text_width(tag_font, text)
        th = _line_height(tag_font)
        bw, bh = tw + 2 * pad, th + 2 * pad
        if bw > w or bh > h / 3:  # a tag would hide a tiny image: the legend suffices
            continue
        tx = min(max(x1, 0), max(0, w - bw))
        ty = y1 - bh if y1 - bh >= 0 else y1
        ty = min(ty, max(0, h - bh))
        draw.rectangle([tx, ty, tx + bw, ty + bh], fill=color)
        draw.text((tx + pad, ty + pad), text, fill=_contrast_text(color), font=tag_font)

    # ---- legend panel
    panel_w = max(w, MIN_PANEL_WIDTH)
    margin = max(4, font_px // 2)
    lh = _line_height(font)
    gap = max(2, lh // 3)
    swatch = lh
    text_x = margin + swatch + margin // 2
    text_width = panel_w - text_x - margin
    blocks: list[tuple[int | None, list[str]]] = []
    if title:
        blocks.append((None, _wrap(str(title), font, panel_w - 2 * margin)))
    for i, item in enumerate(items):
        blocks.append((i, _wrap(_legend_text(i, item), font, text_width)))
    if not items:
        blocks.append((-1, _wrap("no predictions", font, panel_w - 2 * margin)))
    if dashed_drawn:
        blocks.append((-1, _wrap(DASHED_NOTE, font, panel_w - 2 * margin)))
    panel_h = margin * 2 + sum(len(lines) * lh for _, lines in blocks) + gap * (len(blocks) - 1)

    canvas = Image.new("RGB", (panel_w, h + panel_h), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.line([(0, h), (panel_w, h)], fill=(200, 200, 200), width=1)
    y = h + margin
    for idx, lines in blocks:
        if idx is None or idx < 0:
            x0, fill = margin, (_TEXT if idx is None else _MUTED)
        else:
            x0, fill = text_x, _TEXT
            draw.rectangle(
                [margin, y + 1, margin + swatch - 1, y + swatch - 1],
                fill=item_color(idx),
                outline=(60, 60, 60),
            )
        for line in lines:
            draw.text((x0, y), line, fill=fill, font=font)
            y += lh
        y += gap
    return canvas
