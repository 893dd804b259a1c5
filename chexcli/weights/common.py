"""Small helpers shared by the weight importers: logging hook, SHA-256 checks, output folder, JSON-safe configs."""

from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch

from chexcli.errors import ChexError

#: how many parent folders of SOURCE are searched for tokenizer files
SEARCH_PARENTS = 6

Log = Callable[[str], None]


def quiet(_: str) -> None:
    pass


def normalise_sha(value: str) -> str:
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[7:]
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ChexError(f"--expect-sha256 must be 64 hexadecimal digits, got {value!r}")
    return text


def check_sha(actual: str, expected: str | None, what: Path) -> None:
    if expected is not None and actual != normalise_sha(expected):
        raise ChexError(f"SHA-256 of {what} is {actual}, expected {normalise_sha(expected)}; "
                        "the download is corrupt or a different file, download it again")


def json_safe(value: Any) -> Any:
    """Plain JSON data from a config tree (tuples -> lists, other objects -> str)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_out(out: Path) -> None:
    """Refuse --out before any work: a file, a non-empty folder, or a folder that cannot be created."""
    from chexcli.runs import check_out_dir

    if out.is_dir() and any(out.iterdir()):
        raise ChexError(f"{out} already exists and is not empty; choose another --out or remove it")
    check_out_dir(out)


def search_folders(path: Path) -> list[Path]:
    start = path if path.is_dir() else path.parent
    start = start.resolve()
    return [start, *list(start.parents)[:SEARCH_PARENTS]]
