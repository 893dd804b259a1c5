"""The batch job behind `chex predict`: read images, predict in batches, write a run folder, print.

Exit codes: 0 all images succeeded; 1 some image could not be read or
processed (the others are still written); 2 bad input for every image
(for example a box outside every image).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from chexcli.errors import ChexError
from chexcli.runs import run_folder


def _to_user_boxes(boxes: list[tuple[float, float, float, float]], box_format: str, width: int, height: int):
    if box_format == "pixel":
        return [list(b) for b in boxes]
    return [[b[0] * width, b[1] * height, b[2] * width, b[3] * height] for b in boxes]


def _format_box(box, box_format: str, width: int, height: int):
    if box is None:
        return None
    if box_format == "pixel":
        return [round(float(v), 2) for v in box]
    return [round(float(box[0]) / width, 5), round(float(box[1]) / height, 5),
            round(float(box[2]) / width, 5), round(float(box[3]) / height, 5)]


def prediction_record(pred, box_format: str) -> dict:
    """JSON-ready dict of an ImagePrediction with boxes in the requested format."""
    d = pred.to_dict()
    d["box_format"] = box_format
    for q in d["queries"]:
        q["box"] = _format_box(q["box"], box_format, pred.width, pred.height)
        for r in q["regions"]:
            r["box"] = _format_box(r["box"], box_format, pred.width, pred.height)
        if q["features"] is None:
            del q["features"]
    return d


class BoxError(ChexError):
    """A box prompt that does not fit an image."""


def check_boxes(boxes, width: int, height: int):
    """Pixel boxes [x1, y1, x2, y2] checked against an image of width x height and its centre square
    (BoxError, one line, otherwise); returns them as float tuples."""
    from chexcli.model.preprocess import crop_info, pixel_boxes_to_model, validate_pixel_box

    try:
        checked = [validate_pixel_box(b, width, height) for b in boxes]
    except ChexError as err:
        raise BoxError(str(err)) from None
    if checked:
        model = pixel_boxes_to_model(np.asarray(checked), crop_info(height, width))
        for b, m in zip(checked, model):
            if m[2] <= 1e-3 or m[3] <= 1e-3:
                raise BoxError(f"box {list(b)} lies outside the centre square the model sees "
                                f"(the image is centre-cropped to {min(width, height)} px)")
    return checked


def build_record(pred, rep, path: Path, gray: np.ndarray, box_format: str) -> dict:
    """The JSON record of one image; `box_pixels` keys (for drawing) are removed by strip_pixels."""
    h, w = gray.shape
    if pred is not None:
        record = prediction_record(pred, box_format)
        for q, raw in zip(record["queries"], pred.queries):
            q["box_pixels"] = raw.box
            for r, rr in zip(q["regions"], raw.regions):
                r["box_pixels"] = rr.box
    else:
        record = {"image": str(path), "width": w, "height": h, "queries": [], "box_format": box_format}
    if rep is not None:
        record["report"] = rep["report"]
        record["report_queries"] = []
        for q in rep["queries"]:
            q = dict(q, box_pixels=q["box"], box=_format_box(q["box"], box_format, w, h))
            q["regions"] = [dict(r, box_pixels=r["box"], box=_format_box(r["box"], box_format, w, h))
                            for r in q["regions"]]
            record["report_queries"].append(q)
    return record


def strip_pixels(record: dict) -> None:
    """Remove the `box_pixels` keys that build_record adds for drawing (in place)."""
    for q in record["queries"] + record.get("report_queries", []):
        q.pop("box_pixels", None)
        for r in q["regions"]:
            r.pop("box_pixels", None)


def annotate_image(path: Path, gray: np.ndarray, record: dict, target: Path) -> None:
    """Draw the record's boxes and sentences on the image (H, W) in [0, 1] and save the PNG to `target`."""
    from chexcli.render import draw_predictions

    image = Image.fromarray(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    items = []
    for q in record.get("report_queries", []):
        if q["kept"]:
            items.append({"label": q["prompt"], "sentence": q["sentence"], "box": q["box_pixels"],
                          "regions": [], "region_weights": [], "score": q["score"]})
    for q in record["queries"]:
        items.append({
            "label": q["prompt"] if q["type"] == "prompt" else "box",
            "sentence": q.get("sentence"),
            "box": q["box_pixels"],
            "regions": [r["box_pixels"] for r in q["regions"] if r["present"]],
            "region_weights": [r["weight"] for r in q["regions"] if r["present"]],
            "score": q["score"],
        })
    draw_predictions(image, items, title=path.name).save(target)


def _human_lines(record: dict) -> list[str]:
    lines = [f"{record['image']} ({record['width']}x{record['height']})"]
    if "report" in record:
        lines.append(f"  report: {record['report']}")
    for q in record["queries"]:
        label = f"prompt {q['prompt']!r} ({_source_text(q['prompt_source'])})" if q["type"] == "prompt" else "box"
        box = "none (not present)" if q["box"] is None else ", ".join(f"{v:g}" for v in q["box"])
        score = "" if q["score"] is None else f" score {q['score']:.3f}"
        lines.append(f"  {label}: box [{box}]{score}")
        for k, r in enumerate(q["regions"]):
            mark = "*" if r["present"] else " "
            lines.append(f"    {mark} region {k + 1}: [{', '.join(f'{v:g}' for v in r['box'])}] weight {r['weight']:.3f}")
        if q.get("sentence") is not None:
            lines.append(f"    sentence: {q['sentence'].strip()}")
    return lines


def _source_text(source: str | None) -> str:
    """prompt_source as printed: "as typed" for a verbatim prompt, else the name whose synonyms were averaged."""
    if source in (None, "sentence"):
        return "as typed"
    kind, _, name = source.partition(":")
    return f"{kind} {name}: mean of its synonym prompts"


def run_predict(paths: list[Path], model_dir: Path, prompts: list[str], boxes, out: Path, name: str,
                json_out: bool, device, batch_size: int, dtype: str, box_format: str,
                max_new_tokens: int | None, write_images: bool = True, report: bool = False,
                literal: bool = False, sentences: bool = True) -> int:
    """Predict every image of `paths` into a new run folder `out/name`; returns the exit code.

    Raises ChexError (exit 2, no run folder left) when no image could be used at all.
    """
    from chexcli.model.bundle import load_bundle
    from chexcli.predict import Predictor

    needs = (["prompts"] if prompts or report else []) + (["sentences"] if sentences else [])
    model = load_bundle(model_dir, device=device, dtype=dtype, needs=needs)
    predictor = Predictor(model, device=device, max_new_tokens=max_new_tokens, generate=sentences, literal=literal)
    with run_folder(out, name) as run_dir:
        (run_dir / "args.json").write_text(json.dumps({
            "images": [str(p) for p in paths], "model": str(model_dir), "prompts": prompts, "literal": literal,
            "boxes": [list(b) for b in boxes], "box_format": box_format, "device": str(device), "dtype": dtype,
            "batch_size": batch_size, "max_new_tokens": max_new_tokens, "sentences": sentences}, indent=1))
        return _predict_into(run_dir, predictor, paths, prompts, boxes, json_out, batch_size, box_format,
                             write_images, report)


def _predict_into(run_dir: Path, predictor, paths: list[Path], prompts: list[str], boxes, json_out: bool,
                  batch_size: int, box_format: str, write_images: bool, report: bool) -> int:
    from tqdm import tqdm

    from chexcli.data.images.readers import read_image

    failures: list[str] = []
    box_errors = written = 0
    with open(run_dir / "predictions.jsonl", "w") as sink, \
            tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr, disable=len(paths) < 2) as bar:
        for start in range(0, len(paths), batch_size):
            batch = []
            for path in paths[start:start + batch_size]:
                try:
                    gray = read_image(path)
                    h, w = gray.shape
                    image_boxes = check_boxes(_to_user_boxes(boxes, box_format, w, h), w, h)
                    batch.append((path, gray, image_boxes))
                except ChexError as err:
                    box_errors += isinstance(err, BoxError)
                    failures.append(f"{path}: {err}" if not str(err).startswith(str(path)) else str(err))
                    if len(paths) > 1:
                        print(f"skipped {failures[-1]}", file=sys.stderr)
                    bar.update(1)
            if not batch:
                continue
            grays, names = [b[1] for b in batch], [str(b[0]) for b in batch]
            preds = (predictor.predict(grays, names, prompts, [b[2] for b in batch]) if prompts or boxes
                     else [None] * len(batch))
            reports = predictor.report(grays, names) if report else [None] * len(batch)
            for (path, gray, _), pred, rep in zip(batch, preds, reports):
                record = build_record(pred, rep, path, gray, box_format)
                if write_images:
                    target = run_dir / f"{path.stem}.png"
                    k = 2
                    while target.exists():
                        target, k = run_dir / f"{path.stem}_{k}.png", k + 1
                    annotate_image(path, gray, record, target)
                strip_pixels(record)
                line = json.dumps(record)
                sink.write(line + "\n")
                sink.flush()
                if json_out:
                    print(line, flush=True)
                else:
                    print("\n".join(_human_lines(record)), flush=True)
                written += 1
                bar.update(1)
    if not written:  # nothing could run: bad input, not a partial failure (run_folder removes the folder)
        if len(paths) == 1:
            raise ChexError(failures[0])
        if box_errors == len(paths):
            raise ChexError(f"no image accepted the given boxes; first: {failures[0]}")
        raise ChexError(f"none of the {len(paths)} images could be used; first: {failures[0]}")
    if failures:
        (run_dir / "failed.txt").write_text("\n".join(failures) + "\n")
    print(f"results in {run_dir}", file=sys.stderr)
    return 1 if failures else 0
