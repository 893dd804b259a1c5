"""Shared helpers of the data package: atomic writes, digests, split tables, manifest.

Processed folders hold plain files (DESIGN.md principle 4):

* tables ``<name>.all.csv`` (with a ``split`` column) and ``<name>.{train,val,test}.csv``;
  structured cells (boxes, sentence lists) are JSON strings;
* an image cache ``images_<side>.npy`` (uint8, N x side x side, read with
  ``numpy.load(mmap_mode="r")``) with ``images_<side>_index.csv`` (sample_id, index);
* ``manifest.json``, written last by every preparation step.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from chexcli.errors import ChexError
from chexcli.hashing import sha256_file  # noqa: F401  (re-exported for the data modules)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = {"train": "train", "validate": "val", "test": "test"}


# --------------------------------------------------------------------------- files
def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_csv(path: Path, df: pd.DataFrame, index: bool = True) -> None:
    atomic_write_text(path, df.to_csv(index=index, lineterminator="\n"))


def source_digests(raw: Path, files: Iterable[Path]) -> dict[str, str]:
    """SHA-256 of the raw files a step read (relative names), plus SHA256SUMS.txt if present."""
    out = {}
    for p in files:
        p = Path(p)
        if p.is_file():
            try:
                name = str(p.relative_to(raw))
            except ValueError:
                name = p.name
            out[name] = sha256_file(p)
    sums = Path(raw) / "SHA256SUMS.txt"
    if sums.is_file() and "SHA256SUMS.txt" not in out:
        out["SHA256SUMS.txt"] = sha256_file(sums)
    return out


def require_file(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ChexError(f"{what} not found: {path} ({hint})")
    return path


def require_dir(path: Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ChexError(f"{what} not found: {path} ({hint})")
    return path


# --------------------------------------------------------------------------- raw tables
def read_raw_csv(path: Path, columns: Iterable[str], dtype: dict | None = None, numeric: Iterable[str] = (),
                 numeric_or_empty: Iterable[str] = (), allow_no_rows: bool = False,
                 all_columns: bool = False) -> pd.DataFrame:
    """Read the ``columns`` (or, with ``all_columns``, every column) of a raw CSV (plain or
    ``.gz``), requiring ``columns``, with one-line errors naming the file.

    Column names are compared with surrounding spaces removed. ``numeric`` columns must hold
    a finite number in every row, ``numeric_or_empty`` columns a number or nothing. Refuses
    an empty file, a ``.gz`` that is not gzip, text that is not UTF-8, a missing column and
    (unless ``allow_no_rows``) a table without rows.
    """
    path = Path(path)
    wanted = list(dict.fromkeys(columns))
    try:
        usecols = None if all_columns else (lambda c: str(c).strip() in wanted)
        df = pd.read_csv(path, usecols=usecols, dtype=dtype, low_memory=False)
    except pd.errors.EmptyDataError:
        raise ChexError(f"{path} is empty; download it again") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ChexError(f"{path} is not a complete gzip file ({_short(err)}); download it again") from None
    except UnicodeDecodeError:
        raise ChexError(f"{path} is not UTF-8 text (is it the right file?); download it again") from None
    except (pd.errors.ParserError, ValueError) as err:
        raise ChexError(f"{path} is not a readable CSV table ({_short(err)}); download it again") from None
    except OSError as err:
        raise ChexError(f"cannot read {path} ({_short(err)})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise ChexError(f"{path} lacks the column(s) {', '.join(repr(c) for c in missing)}; "
                        "is it the file of the release? download it again")
    if not allow_no_rows and df.empty:
        raise ChexError(f"{path} has a header but no rows; download it again")
    require_numeric(df, numeric, path)
    require_numeric(df, numeric_or_empty, path, allow_empty=True)
    return df


def require_numeric(df: pd.DataFrame, columns: Iterable[str], path: Path, allow_empty: bool = False) -> None:
    """Convert ``columns`` to numbers in place (int64 when every value is whole, else float);
    refuse the first cell that is not a finite number.

    Line numbers count the header as line 1 (row ``i`` of the table is on line ``i + 2``).
    """
    for col in columns:
        values = pd.to_numeric(df[col], errors="coerce").astype(float)
        bad = ~np.isfinite(values.to_numpy())
        if allow_empty:
            bad &= df[col].notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            cell = df[col].iloc[row]
            what = "is empty" if pd.isna(cell) else f"holds {cell!r}" if isinstance(cell, str) else f"holds {cell}"
            raise ChexError(f"{path} line {row + 2}: column {col!r} {what}, not a number")
        whole = values.notna().all() and bool(((values == values.round()) & (values.abs() < 2**53)).all())
        df[col] = values.astype("int64") if whole else values


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# --------------------------------------------------------------------------- results
@dataclass
class PrepareResult:
    """What one ``chex data prepare`` step did: datasets written, images and reports skipped."""

    out: Path
    skipped: int = 0
    skipped_file: Path | None = None
    skipped_reports: int = 0
    skipped_reports_file: Path | None = None
    datasets: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- tables
def to_json_cell(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def write_split_tables(out_dir: Path, name: str, df: pd.DataFrame) -> dict[str, int]:
    """Write ``<name>.all.csv`` and one file per non-empty split; return counts per split.

    ``df`` has the table index set and a ``split`` column (train/validate/test).
    Split files that would be empty are removed so that no stale file survives.
    """
    out_dir = Path(out_dir)
    counts = {}
    for split, suffix in SPLITS.items():
        part = df[df["split"] == split].drop(columns=["split"])
        path = out_dir / f"{name}.{suffix}.csv"
        counts[suffix] = int(len(part))
        if len(part):
            write_csv(path, part)
        elif path.exists():
            path.unlink()
    write_csv(out_dir / f"{name}.all.csv", df)
    return counts


def read_table(path: Path, index_col: str | None = None) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)
    if index_col is not None and index_col in df.columns:
        df = df.set_index(index_col)
    return df


# --------------------------------------------------------------------------- manifest
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def dataset_summary(df: pd.DataFrame, label_cols: list[str] | None = None,
                    box_col: str | None = None) -> dict:
    """Counts per split (and per class: positive labels, or boxes per class) for the manifest."""
    counts = {SPLITS.get(k, k): int(v) for k, v in df["split"].value_counts().items()}
    summary: dict[str, Any] = {"rows": int(len(df)), "splits": counts}
    classes: dict[str, dict[str, int]] = {}
    if label_cols:
        for col in label_cols:
            if col in df.columns:
                pos = df[df[col].fillna(0).astype(float) != 0]
                classes[col] = {SPLITS.get(k, k): int(v) for k, v in pos["split"].value_counts().items()}
    if box_col and box_col in df.columns:
        for split, cell in zip(df["split"], df[box_col]):
            for box in json.loads(cell) if isinstance(cell, str) else cell:
                d = classes.setdefault(f"boxes/{box[4]}", {})
                s = SPLITS.get(split, split)
                d[s] = d.get(s, 0) + 1
    classes = {k: v for k, v in classes.items() if v}
    if classes:
        summary["classes"] = classes
    return summary
