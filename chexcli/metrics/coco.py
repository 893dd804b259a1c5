"""COCO-style box AP through pycocotools, reported next to the reference AP.

Keys are prefixed `coco/` so they are never confused with the reference's
`AP/*`: `coco/AP` (IoU 0.50:0.05:0.95), `coco/AP50`, `coco/AP75`, `coco/AR100`.
Boxes are scaled to a `frame` x `frame` pixel image (224, the evaluated
frame). COCO semantics differ from the reference on purpose: IoU >= t,
at most 100 detections per image, classes without GT are left out of the
mean (not counted as 0). Only the point estimate is computed (COCOeval is
too slow to run per bootstrap replicate).
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np

from chexcli.boxes import cxcywh_to_xyxy
from chexcli.metrics.detection import ImageBoxes


def _xywh_pixels(boxes: np.ndarray, frame: float) -> np.ndarray:
    xyxy = cxcywh_to_xyxy(boxes) * frame
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def coco_box_ap(images: Sequence[ImageBoxes], n_classes: int, frame: float = 224.0) -> dict[str, float]:
    """pycocotools bbox AP of the images (class ids 0..C-1)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_anns, dets = [], []
    for i, img in enumerate(images):
        for box, label in zip(_xywh_pixels(img.gt_boxes, frame), img.gt_labels):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i, "category_id": int(label),
                            "bbox": [float(v) for v in box], "area": float(box[2] * box[3]), "iscrowd": 0})
        for box, label, score in zip(_xywh_pixels(img.pred_boxes, frame), img.pred_labels, img.pred_scores):
            dets.append({"image_id": i, "category_id": int(label), "bbox": [float(v) for v in box],
                         "score": float(score)})
    nan = float("nan")
    if not gt_anns or not dets:
        return {"coco/AP": 0.0 if gt_anns else nan, "coco/AP50": 0.0 if gt_anns else nan,
                "coco/AP75": 0.0 if gt_anns else nan, "coco/AR100": 0.0 if gt_anns else nan}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": [{"id": i, "width": frame, "height": frame} for i in range(len(images))],
                      "annotations": gt_anns,
                      "categories": [{"id": c, "name": str(c)} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) if v >= 0 else nan for v in ev.stats]  # -1 = undefined in pycocotools
    return {"coco/AP": stats[0], "coco/AP50": stats[1], "coco/AP75": stats[2], "coco/AR100": stats[8]}
