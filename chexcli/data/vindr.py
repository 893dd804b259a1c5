"""VinDr-CXR 1.0.0: labels (majority vote), fused training boxes, deterministic val/test split,
DICOM -> histogram-equalised 8-bit images -> uint8 cache (DATASETS.md section 9).

Processed folder: ``vindrcxr.{all,train,val,test}.csv`` (index ``image_id``; columns
``cls/vindrcxr/<label>`` x 28, ``clsbbox`` JSON, ``H``, ``W``) and the image cache.
Unlike the reference, no full-resolution PNGs are written: the equalised image goes straight
into the cache (H, W are the DICOM's rows and columns).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from chexcli.data.cache import array_for_cache, build_cache, write_skipped
from chexcli.data.common import (PrepareResult, dataset_summary, read_manifest, read_raw_csv, require_numeric,
                                 source_digests, update_manifest, write_split_tables)
from chexcli.data.image_io import check_pixel_count
from chexcli.data.names import VINDR_LABELS
from chexcli.errors import ChexError

NAME = "vindrcxr"
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


# ----------------------------------------------------------------------------- boxes
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def fuse_class_boxes(boxes: np.ndarray, iou_thr: float = 0.1) -> list[tuple[np.ndarray, int]]:
    """Weighted boxes fusion of one class with equal scores: (fused box, members) per cluster.

    Boxes are visited in reverse input order; each joins the cluster whose current fused box
    overlaps it most if that IoU is > ``iou_thr``, else starts a new cluster. A fused box
    is the float32 mean of its members.
    """
    clusters: list[list[np.ndarray]] = []
    fused: list[np.ndarray] = []
    for b in boxes[::-1]:
        best, best_iou = -1, iou_thr
        for k, f in enumerate(fused):
            v = _iou(f, b)
            if v > best_iou:
                best, best_iou = k, v
        if best < 0:
            clusters.append([b])
            fused.append(b.astype(np.float32))
        else:
            clusters[best].append(b)
            fused[best] = np.mean(np.stack(clusters[best]).astype(np.float32), axis=0, dtype=np.float32)
    return [(f, len(c)) for f, c in zip(fused, clusters)]


def fuse_image_boxes(rows: pd.DataFrame) -> list[list]:
    """Training boxes of one image (all radiologists) -> fused ``[x1, y1, x2, y2, label]`` list."""
    rows = rows.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
    if rows.empty:
        return []
    counts = rows["class_name"].value_counts(sort=False)
    multi = [c for c in dict.fromkeys(rows["class_name"]) if counts[c] >= 2]
    singles = [[float(r.x_min), float(r.y_min), float(r.x_max), float(r.y_max), f"vindrcxr/{r.class_name}"]
               for r in rows.itertuples() if counts[r.class_name] == 1]
    fused_out = []
    if multi:
        m = rows[rows["class_name"].isin(multi)]
        coords = m[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
        lo, hi = float(coords.min()), float(coords.max())
        scale = (hi - lo) or 1.0
        n_models = len(multi)
        for c in multi:
            cb = m.loc[m["class_name"] == c, ["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float64)
            cb = (cb - lo) / scale
            cb = cb[(cb[:, 2] > cb[:, 0]) & (cb[:, 3] > cb[:, 1])]  # zero-area boxes are discarded
            for f, k in fuse_class_boxes(cb):
                score = min(k, n_models) / n_models
                box = [float(v) * scale + lo for v in f]
                fused_out.append((score, box + [f"vindrcxr/{c}"]))
        fused_out.sort(key=lambda t: -t[0])  # stable: ties keep class / cluster order
    return [b for _, b in fused_out] + singles


def _box_cells(ann: pd.DataFrame, fuse: bool) -> dict[str, str]:
    out = {}
    for image_id, rows in ann.groupby("image_id", sort=False):
        if fuse:
            boxes = fuse_image_boxes(rows)
        else:
            r = rows.dropna(subset=["x_min", "y_min", "x_max", "y_max"])
            boxes = [[float(a), float(b), float(c), float(d), f"vindrcxr/{n}"]
                     for a, b, c, d, n in zip(r.x_min, r.y_min, r.x_max, r.y_max, r.class_name)]
        out[image_id] = json.dumps(boxes)
    return out


# ----------------------------------------------------------------------------- images
def equalize_hist_uint8(img: np.ndarray) -> np.ndarray:
    """Reference conversion: /255, histogram equalisation (256 bins over the image range), *255, truncate."""
    x = img.astype(np.float64) / 255.0
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.full(img.shape, 255, dtype=np.uint8)  # cdf is 1 everywhere
    hist, edges = np.histogram(x, bins=256, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    cdf = np.cumsum(hist).astype(np.float64)
    cdf /= cdf[-1]
    out = np.interp(x.ravel(), centers, cdf).reshape(x.shape)
    return (out * 255).astype(np.uint8)


def dicom_to_uint8(path: str) -> np.ndarray:
    """VinDr DICOM -> equalised uint8 (H, W): raw stored values, MONOCHROME1 inverted with the
    image maximum, min-max to 8 bit (truncated) unless already uint8, histogram equalisation."""
    import pydicom
    from pydicom.pixels import pixel_array

    ds = pydicom.dcmread(path)
    check_pixel_count(path, int(ds.Columns), int(ds.Rows))  # before anything is decoded
    try:
        arr = pixel_array(ds, index=0) if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else ds.pixel_array
    except Exception as err:  # noqa: BLE001 - missing decoder plugins raise various types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise ChexError(f"cannot decode pixel data ({name}): {err}. Install a decoder plugin, e.g. "
                        "`pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
                        "`pip install python-gdcm`") from None
    if arr.ndim == 3:  # colour: luminance
        arr = arr[..., :3].mean(axis=-1)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        arr = arr.max() - arr
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        arr = a.astype(np.uint8)
    return equalize_hist_uint8(arr)


def load_vindr_cached(path: str, side: int):
    """Cache loader (picklable): DICOM -> equalised uint8 -> resized crop; returns (img, H, W)."""
    img = dicom_to_uint8(path)
    return array_for_cache(img, side), int(img.shape[0]), int(img.shape[1])


# ----------------------------------------------------------------------------- prepare
def prepare_vindr(raw: Path, out: Path, workers: int = 1, side: int = 256, progress: bool = True) -> PrepareResult:
    root = find_root(raw).resolve()
    out = Path(out)
    man = read_manifest(out)
    if man and man.get("kind") not in (None, "vindr"):
        raise ChexError(f"{out} holds a prepared {man['kind']} dataset; use another --out for VinDr-CXR")
    update_manifest(out, "vindr", "vindr-cxr", None)
    ann_dir = root / "annotations"
    files = {k: ann_dir / f"{k}.csv" for k in
             ("annotations_train", "annotations_test", "image_labels_train", "image_labels_test")}
    for k, p in files.items():
        if not p.is_file():
            raise ChexError(f"{p} not found: the VinDr-CXR release is incomplete (re-run fetch)")
    tr = train_labels(files["image_labels_train"])
    te = test_labels(files["image_labels_test"])
    box_cols = ["image_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    ann_tr, ann_te = (read_raw_csv(files[k], box_cols, dtype={"image_id": str, "class_name": str},
                                   numeric_or_empty=box_cols[2:]) for k in ("annotations_train", "annotations_test"))
    boxes = _box_cells(ann_tr, fuse=True) | _box_cells(ann_te, fuse=False)
    df = pd.concat([tr, te])
    df.index.name = "image_id"
    df = df[df.index.isin(boxes.keys())].copy()  # inner join with the annotation table
    df["clsbbox"] = [boxes[i] for i in df.index]
    paths = [str(root / ("train" if s == "train" else "test") / f"{i}.dicom")
             for i, s in zip(df.index, df["split"])]
    res = build_cache(out, list(df.index), paths, side=side, workers=workers,
                      loader=load_vindr_cached, progress=progress, desc="VinDr-CXR DICOMs")
    df["H"] = res.sizes[:, 0].astype(float)
    df["W"] = res.sizes[:, 1].astype(float)
    skipped = {s for s, _, _ in res.skipped}
    ok = ~df.index.isin(skipped)
    df = df.rename(columns={c: f"cls/vindrcxr/{c}" for c in VINDR_LABELS})
    table = df[ok]
    counts = write_split_tables(out, NAME, table)
    result = PrepareResult(out)
    if res.skipped:
        result.skipped_file = write_skipped(out, res.skipped)
        result.skipped = len(res.skipped)
        result.messages.append(f"first unreadable image: {res.skipped[0][0]}: {res.skipped[0][2]}")
    elif (out / "skipped_images.csv").exists():
        (out / "skipped_images.csv").unlink()
    summary = dataset_summary(table, label_cols=[f"cls/vindrcxr/{c}" for c in VINDR_LABELS])
    summary["files"] = {k: f"{NAME}.{k}.csv" for k, v in counts.items() if v} | {"all": f"{NAME}.all.csv"}
    result.datasets = {NAME: summary}
    entry = {"raw": str(root), "source_digests": source_digests(root, list(files.values())),
             "images": int(len(df)), "cached": res.done, "skipped": len(res.skipped),
             "image_cache": f"images_{side}.npy", "side": side}
    update_manifest(out, "vindr", "vindr-cxr", entry, datasets=result.datasets)
    return result
