"""MIMIC-CXR-JPG 2.0.0: metadata, official split, frontal filter, image cache (docs/data.md#mimic-cxr-jpg)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from chexcli.data.images.cache import build_cache
from chexcli.data.prepare.raw_files import read_raw_csv, require_dir, require_file, source_digests
from chexcli.data.processed.files import write_csv
from chexcli.data.processed.layout import FRONTAL_TABLE, image_cache_files

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"


def find_jpg_root(raw: Path) -> Path:
    """The folder holding the metadata file (``raw`` itself or a mirrored sub-folder)."""
    raw = require_dir(raw, "MIMIC-CXR-JPG folder", "pass --raw, or run `chex data fetch mimic-cxr-jpg`")
    for cand in (raw, raw / "mimic-cxr-jpg" / "2.0.0", raw / "2.0.0"):
        if (cand / METADATA).is_file():
            return cand
    hits = sorted(raw.glob(f"**/{METADATA}"))
    if hits:
        return hits[0].parent
    require_file(raw / METADATA, "MIMIC-CXR-JPG metadata",
                 "run `chex data fetch mimic-cxr-jpg` or point --raw at the release folder")
    raise AssertionError  # unreachable


def image_path(subject_id: int, study_id: int, dicom_id: str) -> str:
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def frontal_table(root: Path) -> pd.DataFrame:
    """Metadata inner-joined with the split file, PA/AP only, in metadata-file order.

    Columns: dicom_id (index), H, W, view, study_id, subject_id, split, sample_id, path.
    """
    meta = read_raw_csv(root / METADATA, ["dicom_id", "Rows", "Columns", "ViewPosition"],
                        dtype={"dicom_id": str, "ViewPosition": str}, numeric=["Rows", "Columns"])
    meta = meta.rename(columns={"Rows": "H", "Columns": "W", "ViewPosition": "view"})
    split = read_raw_csv(require_file(root / SPLIT, "MIMIC-CXR-JPG split file",
                                      "it is part of the release; re-run fetch"),
                         ["dicom_id", "study_id", "subject_id", "split"], dtype={"dicom_id": str, "split": str},
                         numeric=["study_id", "subject_id"])
    df = meta.merge(split[["dicom_id", "study_id", "subject_id", "split"]], on="dicom_id",
                    how="inner", sort=False)
    df = df[df["view"].isin(["PA", "AP"])].copy()
    df["study_id"] = df["study_id"].astype("int64")
    df["subject_id"] = df["subject_id"].astype("int64")
    df["sample_id"] = [f"{a}/{b}/{c}" for a, b, c in zip(df["subject_id"], df["study_id"], df["dicom_id"])]
    df["path"] = [image_path(a, b, c) for a, b, c in zip(df["subject_id"], df["study_id"], df["dicom_id"])]
    return df.set_index("dicom_id")


def prepare_jpg(raw: Path, out: Path, side: int, workers: int, progress: bool) -> tuple[dict, list]:
    """Write the frontal table and the image cache; return (manifest entry, skipped images)."""
    root = find_jpg_root(raw)
    df = frontal_table(root)
    res = build_cache(out, list(df["sample_id"]), [str(root / p) for p in df["path"]], side=side,
                      workers=workers, progress=progress, desc="MIMIC-CXR-JPG images")
    skipped_ids = {s for s, _, _ in res.skipped}
    df["cached"] = [sid not in skipped_ids for sid in df["sample_id"]]
    write_csv(Path(out) / FRONTAL_TABLE, df)
    return {
        "raw": str(root.resolve()),
        "source_digests": source_digests(root, [root / METADATA, root / SPLIT]),
        "images": int(len(df)),
        "cached": int(res.done),
        "skipped": len(res.skipped),
        "image_cache": image_cache_files(side)["array"],
        "side": side,
    }, res.skipped
