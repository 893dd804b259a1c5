"""VinDr-CXR 1.0.0: labels (majority vote), fused training boxes, deterministic val/test split,
DICOM -> histogram-equalised 8-bit images -> uint8 cache (docs/data.md#vindr-cxr).

Processed folder: ``vindrcxr.{all,train,val,test}.csv`` (index ``image_id``; columns
``cls/vindrcxr/<label>`` x 28, ``clsbbox`` JSON, ``H``, ``W``) and the image cache.
Unlike the reference, no full-resolution PNGs are written: the equalised image goes straight
into the cache (H, W are the DICOM's rows and columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexcli.data.images.cache import build_cache
from chexcli.data.names import VINDR_LABELS
from chexcli.data.prepare.raw_files import read_raw_csv, require_numeric, source_digests
from chexcli.data.prepare.result import PrepareResult, note_skipped_images
from chexcli.data.prepare.vindr_boxes import box_cells
from chexcli.data.prepare.vindr_images import load_vindr_cached
from chexcli.data.processed.layout import VINDR, image_cache_files
from chexcli.data.processed.manifest import require_kind, update_manifest
from chexcli.data.processed.tables import write_dataset
from chexcli.errors import ChexError

VAL_RATIO = 0.5
SEED = 12345


def find_root(raw: Path) -> Path:
    raw = Path(raw)
    for cand in (raw, raw / "vindr-cxr" / "1.0.0", raw / "1.0.0"):
        if (cand / "annotations" / "annotations_train.csv").is_file():
            return cand
    hits = sorted(raw.glob("**/annotations/annotations_train.csv"))
    if hits:
        return hits[0].parent.parent
    raise ChexError(f"no VinDr-CXR 1.0.0 release below {raw} (expected annotations/annotations_train.csv); "
                    "run `chex data fetch vindr-cxr` or point --raw at the release folder")


# ----------------------------------------------------------------------------- labels
def _label_frame(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    df = df.rename(columns={"Other diseases": "Other disease"})
    cols = [c for c in df.columns if c not in ("image_id", "rad_id")]
    if set(cols) != set(VINDR_LABELS):
        raise ChexError(f"{path}: label columns differ from the VinDr-CXR 1.0.0 release "
                        f"(unexpected {sorted(set(cols) - set(VINDR_LABELS))}, missing "
                        f"{sorted(set(VINDR_LABELS) - set(cols))}); download it again")
    require_numeric(df, VINDR_LABELS, path)
    return df[["image_id"] + (["rad_id"] if "rad_id" in df.columns else []) + VINDR_LABELS]


def _read_labels(path: Path, rad_id: bool) -> pd.DataFrame:
    """A label file: image_id (+ rad_id) and the label columns (checked by _label_frame)."""
    return read_raw_csv(path, ["image_id", "rad_id"] if rad_id else ["image_id"],
                        dtype={"image_id": str, "rad_id": str}, all_columns=True)


def train_labels(path: Path) -> pd.DataFrame:
    """Majority vote over the radiologists of each image (ties -> 0, like pandas' mode)."""
    df = _label_frame(_read_labels(path, rad_id=True), path)
    g = df.drop(columns=["rad_id"]).groupby("image_id", sort=True)
    pos = g.sum()
    n = g.size()
    lab = (pos.mul(2) > pd.concat([n] * len(VINDR_LABELS), axis=1).set_axis(VINDR_LABELS, axis=1)).astype(int)
    lab["split"] = "train"
    return lab


def test_labels(path: Path, val_ratio: float = VAL_RATIO) -> pd.DataFrame:
    df = _label_frame(_read_labels(path, rad_id=False), path)
    perm = np.random.RandomState(SEED).permutation(len(df))
    df = df.iloc[perm].reset_index(drop=True)
    n_val = int(len(df) * val_ratio)
    df["split"] = ["validate"] * n_val + ["test"] * (len(df) - n_val)
    return df.set_index("image_id")[VINDR_LABELS + ["split"]].astype({c: int for c in VINDR_LABELS})


# ----------------------------------------------------------------------------- prepare
LABEL_COLUMNS = [f"cls/vindrcxr/{c}" for c in VINDR_LABELS]
ANNOTATION_FILES = ("annotations_train", "annotations_test", "image_labels_train", "image_labels_test")


def prepare_vindr(raw: Path, out: Path, workers: int = 1, side: int = 256, progress: bool = True) -> PrepareResult:
    root = find_root(raw).resolve()
    out = Path(out)
    require_kind(out, "vindr", "VinDr-CXR")
    update_manifest(out, "vindr", "vindr-cxr", None)
    files = {k: root / "annotations" / f"{k}.csv" for k in ANNOTATION_FILES}
    for k, p in files.items():
        if not p.is_file():
            raise ChexError(f"{p} not found: the VinDr-CXR release is incomplete (re-run fetch)")
    df = _labels_and_boxes(files)
    paths = [str(root / ("train" if s == "train" else "test") / f"{i}.dicom")
             for i, s in zip(df.index, df["split"])]
    res = build_cache(out, list(df.index), paths, side=side, workers=workers,
                      loader=load_vindr_cached, progress=progress, desc="VinDr-CXR DICOMs")
    df["H"] = res.sizes[:, 0].astype(float)
    df["W"] = res.sizes[:, 1].astype(float)
    skipped = {s for s, _, _ in res.skipped}
    df = df.rename(columns=dict(zip(VINDR_LABELS, LABEL_COLUMNS)))
    table = df[~df.index.isin(skipped)]
    result = PrepareResult(out)
    result.datasets = {VINDR: write_dataset(out, VINDR, table, label_cols=LABEL_COLUMNS)}
    note_skipped_images(result, res.skipped)
    entry = {"raw": str(root), "source_digests": source_digests(root, list(files.values())),
             "images": int(len(df)), "cached": res.done, "skipped": len(res.skipped),
             "image_cache": image_cache_files(side)["array"], "side": side}
    update_manifest(out, "vindr", "vindr-cxr", entry, datasets=result.datasets)
    return result


def _labels_and_boxes(files: dict[str, Path]) -> pd.DataFrame:
    """Image labels (train: majority vote) and boxes of every image that has an annotation row."""
    tr = train_labels(files["image_labels_train"])
    te = test_labels(files["image_labels_test"])
    box_cols = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    ann_tr, ann_te = (read_raw_csv(files[k], box_cols, dtype={"image_id": str, "class_name": str},
                                   numeric_or_empty=box_cols[2:]) for k in ("annotations_train", "annotations_test"))
    boxes = box_cells(ann_tr, fuse=True) | box_cells(ann_te, fuse=False)
    df = pd.concat([tr, te])
    df.index.name = "image_id"
    df = df[df.index.isin(boxes.keys())].copy()  # inner join with the annotation table
    df["clsbbox"] = [boxes[i] for i in df.index]
    return df
