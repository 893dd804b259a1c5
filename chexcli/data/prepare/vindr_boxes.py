"""VinDr-CXR training boxes: the boxes of all radiologists of an image fused per class
(weighted boxes fusion with equal scores, as the reference does; docs/data.md#vindr-cxr)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from chexcli.boxes import box_iou_xyxy


def fuse_class_boxes(boxes: np.ndarray, iou_thr: float = 0.1) -> list[tuple[np.ndarray, int]]:
    """Weighted boxes fusion of one class with equal scores: (fused box, members) per cluster.

    Boxes are visited in reverse input order; each joins the cluster whose current fused box
    overlaps it most if that IoU is > ``iou_thr``, else starts a new cluster. A fused box
    is the float32 mean of its members.
    """
    clusters: list[list[np.ndarray]] = []
    fused: list[np.ndarray] = []
    for b in boxes[::-1]:
        best = -1
        if fused:
            ious = box_iou_xyxy(b, np.stack(fused))[0]
            k = int(np.argmax(ious))  # the first cluster of the largest overlap
            best = k if ious[k] > iou_thr else -1
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


def box_cells(ann: pd.DataFrame, fuse: bool) -> dict[str, str]:
    """image_id -> JSON list of its boxes; training boxes fused (``fuse``), test boxes as they are."""
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
