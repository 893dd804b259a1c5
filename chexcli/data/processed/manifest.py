"""``manifest.json``: schema version, one entry per preparation step, per dataset its counts.

A step first marks itself unfinished and writes its finished entry as its very last write,
so an interrupted step never looks complete (docs/data.md#chex-data-prepare).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from chexcli.data.processed.files import write_json
from chexcli.data.processed.layout import MANIFEST
from chexcli.errors import ChexError

SCHEMA_VERSION = 1


def read_manifest(out_dir: Path) -> dict | None:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def update_manifest(out_dir: Path, kind: str, part: str, entry: dict | None,
                    datasets: dict | None = None) -> dict:
    """Set (or, with ``entry=None``, clear) one preparation step in the manifest.

    Called with ``entry=None`` when a step starts (so an interrupted step is not
    reported as complete) and with the finished entry as the very last write.
    """
    out_dir = Path(out_dir)
    man = read_manifest(out_dir) or {}
    if man.get("schema_version") not in (None, SCHEMA_VERSION):
        raise ChexError(
            f"{out_dir} was prepared with schema version {man.get('schema_version')}, this "
            f"chexcli writes version {SCHEMA_VERSION}; prepare into a new --out folder")
    man["schema_version"] = SCHEMA_VERSION
    man["kind"] = kind
    man.setdefault("parts", {})
    man.setdefault("datasets", {})
    if entry is None:
        man["parts"][part] = {"complete": False, "started_at": _now()}
    else:
        man["parts"][part] = {"complete": True, "finished_at": _now(), **entry}
    if datasets:
        man["datasets"].update(datasets)
    write_json(out_dir / MANIFEST, man)
    return man


def part_complete(out_dir: Path, part: str) -> bool:
    """Whether the step ``part`` finished in ``out_dir``."""
    man = read_manifest(out_dir) or {}
    return bool(man.get("parts", {}).get(part, {}).get("complete"))


def require_kind(out_dir: Path, kind: str, what: str) -> None:
    """Refuse a folder that already holds another kind of prepared dataset."""
    man = read_manifest(out_dir)
    if man and man.get("kind") not in (None, kind):
        raise ChexError(f"{out_dir} holds a prepared {man['kind']} dataset; use another --out for {what}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
