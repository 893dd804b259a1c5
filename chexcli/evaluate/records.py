"""The prediction-file schema: how records are written and how a `--predictions` file is read back.

A prediction file holds one JSON object per line and image (see `inference` for the
fields). `read_predictions` checks every line against the schema before anything is
scored: the task, the types of every key the metrics read, class names, and that every
box, score, weight, logit and probability is a finite number (a NaN box would otherwise
be scored, silently wrong). Errors are one line naming the file, the line and the key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from chexcli.errors import ChexError
from chexcli.evaluate.tasks import TaskConfig
from chexcli.boxes import cxcywh_to_xyxy

HINT = "pass a .predictions.jsonl written by `chex evaluate`"


# ------------------------------------------------------------------ writing
def corners(box) -> list[float]:
    """Centre-format box (x_c, y_c, w, h) -> corner list [x1, y1, x2, y2]."""
    return [float(v) for v in cxcywh_to_xyxy(np.asarray(box, dtype=np.float64).reshape(1, 4))[0]]


def floats(x) -> list:
    return np.asarray(x, dtype=np.float64).tolist()


# ------------------------------------------------------------------ reading
class _Bad(Exception):
    """A schema violation; its text names the key (and, with `hint=False`, says itself what to do)."""

    def __init__(self, message: str, hint: bool = True):
        super().__init__(message)
        self.hint = hint


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{where} is {_kind(value)}, not a number")
    if not math.isfinite(value):
        raise _Bad(f"{where} is {value}, not a finite number")


def _box(value: Any, where: str) -> None:
    if not isinstance(value, list):
        raise _Bad(f"{where} is {_kind(value)}, not a box of 4 numbers")
    if len(value) != 4:
        raise _Bad(f"{where} has {len(value)} values, not 4 (a box)")
    for i, v in enumerate(value):
        _number(v, f"{where}[{i}]")


def _objects(value: Any, where: str) -> list[dict]:
    if not isinstance(value, list):
        raise _Bad(f"{where} is {_kind(value)}, not a list")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Bad(f"{where}[{i}] is {_kind(item)}, not an object")
    return value


def _optional(obj: dict, key: str, check, where: str) -> None:
    if obj.get(key) is not None:
        check(obj[key], f"{where}.{key}")


def _string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _Bad(f"{where} is {_kind(value)}, not a string")


def _boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _Bad(f"{where} is {_kind(value)}, not true/false")


def _required(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise _Bad(f"{where} lacks the key {key!r}")
    return obj[key]


def _boxes_and_scores(items: list[dict], where: str, score_key: str) -> None:
    for i, d in enumerate(items):
        w = f"{where}[{i}]"
        _box(_required(d, "box_model", w), f"{w}.box_model")
        _number(_required(d, score_key, w), f"{w}.{score_key}")
        _optional(d, "box", _box, w)
        _optional(d, "logit", _number, w)
        _optional(d, "present", _boolean, w)


def check_record(rec: Any, task: TaskConfig, names: list[str]) -> None:
    """Raise _Bad naming the first key of `rec` that does not fit the schema of `task`."""
    if not isinstance(rec, dict):
        raise _Bad(f"is {_kind(rec)}, not a JSON object")
    _string(_required(rec, "image", "the record"), "image")
    if rec.get("task", task.name) != task.name:
        raise _Bad(f"holds predictions of task {rec['task']!r}, not {task.name}; use --task {rec['task']}", hint=False)
    kind = task.kind
    if kind == "report_generation":
        _string(_required(rec, "report", "the record"), "report")
    queries = _objects(_required(rec, "queries", "the record"), "queries")
    for k, q in enumerate(queries):
        w = f"queries[{k}]"
        for key in ("prompt", "sentence", "prompt_source", "type"):
            _optional(q, key, _string, w)
        for key in ("box", "box_model"):
            _optional(q, key, _box, w)
        for key in ("score", "positiveness"):
            _optional(q, key, _number, w)
        for key in ("present", "selected", "kept"):
            _optional(q, key, _boolean, w)
        if q.get("class") is not None:
            _string(q["class"], f"{w}.class")
            if kind == "detection" and q["class"] not in names:
                raise _Bad(f"{w}.class {q['class']!r} is not a class of {task.name} "
                           f"(classes: {', '.join(names)})")
        if "regions" in q:
            _boxes_and_scores(_objects(q["regions"], f"{w}.regions"), f"{w}.regions", "weight")
        if kind in ("detection", "grounding"):
            _boxes_and_scores(_objects(_required(q, "detections", w), f"{w}.detections"), f"{w}.detections", "score")
        if kind == "grounding":
            _string(_required(q, "prompt", w), f"{w}.prompt")
        if kind in ("box_explanation", "anatomy_explanation"):
            probs = _required(q, "probs", w) if kind == "box_explanation" else q.get("probs")
            if probs is not None:
                if not isinstance(probs, list):
                    raise _Bad(f"{w}.probs is {_kind(probs)}, not a list of probabilities")
                if len(probs) != len(names):
                    raise _Bad(f"{w}.probs has {len(probs)} values, not {len(names)} (one probability per class "
                               f"of {task.name})")
                for c, v in enumerate(probs):
                    _number(v, f"{w}.probs[{c}]")


def read_predictions(path: str | Path, task: TaskConfig) -> list[dict]:
    """Records of a prediction JSONL file, every line checked against the schema of `task`."""
    from chexcli.data.names import class_names

    p = Path(path)
    if not p.is_file():
        raise ChexError(f"prediction file {p} not found; {HINT}")
    names = class_names(task.get("class_names")) if task.get("class_names") else []
    records = []
    try:
        with open(p, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ChexError(f"{p} line {n} is not UTF-8 text (a binary file?); {HINT}") from None
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    raise ChexError(f"{p} line {n} is not JSON; pass a JSON-lines prediction file") from None
                try:
                    check_record(rec, task, names)
                except _Bad as bad:
                    raise ChexError(f"{p} line {n}: {bad}" + (f"; {HINT}" if bad.hint else "")) from None
                records.append(rec)
    except OSError as err:
        raise ChexError(f"cannot read the prediction file {p} ({err.strerror or err})") from None
    if not records:
        raise ChexError(f"{p} holds no predictions; {HINT}")
    return records
