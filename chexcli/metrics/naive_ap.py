"""A straightforward reference-semantics box AP, recomputed from scratch.

This is the oracle that `BoxAP` (which matches each image once) is tested
against, and the "recompute the metric per replicate" baseline of
benchmarks/bootstrap.py. It is deliberately simple and slow: for every
class and threshold it sorts all predictions of the (resampled) set, and
matches each one against the GT boxes of its image with freshly computed
IoUs. Same inputs and key names as `detection.BoxAP`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from chexcli.boxes import box_iou_cxcywh
from chexcli.metrics.detection import IOU_THRESHOLDS, RECALL_THRESHOLDS, ImageBoxes, summarize_ap


def naive_ap_table(images: Sequence[ImageBoxes], n_classes: int,
                   thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """AP (C, T) of a list of images (duplicates count as distinct images)."""
    ap = np.zeros((n_classes, len(thresholds)))
    for c in range(n_classes):
        preds = []  # (score, image index, box)
        n_gt = 0
        for i, img in enumerate(images):
            n_gt += int((img.gt_labels == c).sum())
            for k in range(len(img.pred_scores)):
                if img.pred_labels[k] == c:
                    preds.append((img.pred_scores[k], i, img.pred_boxes[k]))
        if n_gt == 0 or not preds:
            continue
        order = sorted(range(len(preds)), key=lambda k: -preds[k][0])  # stable
        for j, t in enumerate(thresholds):
            matched: dict[int, set] = {}
            tp = fp = 0
            precisions, recalls = [], []
            for k in order:
                _, i, box = preds[k]
                gts = images[i].gt_boxes[images[i].gt_labels == c]
                hit = False
                if len(gts):
                    iou = box_iou_cxcywh(box[None], gts)[0]
                    seen = matched.setdefault(i, set())
                    for g in sorted(range(len(gts)), key=lambda g: -iou[g]):
                        if not iou[g] > t:
                            break
                        if g not in seen:
                            seen.add(g)
                            hit = True
                            break
                if hit:
                    tp += 1
                else:
                    fp += 1
                precisions.append(tp / max(tp + fp, np.finfo(np.float64).eps))
                recalls.append(tp / max(n_gt, 1))
            precisions, recalls = np.array(precisions), np.array(recalls)
            vals = []
            for rho in RECALL_THRESHOLDS:
                ok = recalls >= rho
                vals.append(precisions[ok].max() if ok.any() else 0.0)
            ap[c, j] = np.mean(vals)
    return ap


def naive_box_ap(images: Sequence[ImageBoxes], class_names: Sequence[str],
                 thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, float]:
    """Reference AP keys, computed from scratch."""
    return summarize_ap(naive_ap_table(images, len(class_names), thresholds), class_names, thresholds)
