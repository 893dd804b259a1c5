"""Dataset tables: the split files of a dataset and its counts for the manifest.

Structured cells (boxes, sentence lists) are JSON strings (docs/data.md#chex-data-prepare).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import SPLITS, split_file


def write_split_tables(out_dir: Path, name: str, df: pd.DataFrame) -> dict[str, int]:
    """Write ``<name>.all.csv`` and one file per non-empty split; return counts per split.

    ``df`` has the table index set and a ``split`` column (train/validate/test).
    Split files that would be empty are removed so that no stale file survives.
    """
    out_dir = Path(out_dir)
    counts = {}
    for split, suffix in SPLITS.items():
        part = df[df["split"] == split].drop(columns=["split"])
        path = out_dir / split_file(name, suffix)
        counts[suffix] = int(len(part))
        if len(part):
            write_csv(path, part)
        elif path.exists():
            path.unlink()
    write_csv(out_dir / split_file(name, "all"), df)
    return counts


def write_dataset(out_dir: Path, name: str, df: pd.DataFrame, label_cols: list[str] | None = None,
                  box_col: str | None = None) -> dict:
    """Write the tables of dataset ``name``; return its manifest entry (counts and files).

    Classes are counted from ``label_cols`` (positive labels), ``box_col`` (boxes per class)
    and, when the table has ``anat_labels``, per region label (:func:`region_class_counts`).
    """
    counts = write_split_tables(out_dir, name, df)
    summary = dataset_summary(df, label_cols=label_cols, box_col=box_col)
    if "anat_labels" in df.columns:
        summary["classes"] = region_class_counts(df)
    summary["files"] = {k: split_file(name, k) for k, v in counts.items() if v} | {"all": split_file(name, "all")}
    return summary


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
                _count(classes, f"boxes/{box[4]}", split)
    classes = {k: v for k, v in classes.items() if v}
    if classes:
        summary["classes"] = classes
    return summary


def region_class_counts(df: pd.DataFrame) -> dict:
    """Images with the label in at least one region (``anat_labels``), per split."""
    counts: dict[str, dict[str, int]] = {}
    for split, cell in zip(df["split"], df["anat_labels"]):
        for label in sorted({lab for labels in json.loads(cell).values() for lab in labels}):
            _count(counts, f"cig/{label}", split)
    return dict(sorted(counts.items()))


def _count(counts: dict[str, dict[str, int]], key: str, split: str) -> None:
    per_split = counts.setdefault(key, {})
    suffix = SPLITS.get(split, split)
    per_split[suffix] = per_split.get(suffix, 0) + 1
