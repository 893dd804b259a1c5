"""Box average precision with the reference's semantics (docs/evaluation.md#box-ap).

* IoU thresholds t in {0.1, ..., 0.7}; a prediction matches a GT box of its
  class in the same image only if IoU > t (strict).
* Predictions of a class are visited in descending score over the whole set;
  each visits the GT boxes of its image in descending IoU: an unmatched GT
  with IoU > t -> TP, a matched one -> try the next, the first with IoU <= t
  (or no GT at all) -> FP ("soft" matching policy).
* precision_k = TP_k / k, recall_k = TP_k / max(#GT_c, 1);
  AP_c(t) = mean over rho in {0, 0.01, ..., 1} of max{precision_k : recall_k >= rho}
  (0 if no point reaches rho). A class without GT has AP 0 and is averaged in.
* mAP = mean over thresholds of the mean over classes.

Speed: whether a prediction is a TP depends only on the predictions of its
own image that rank before it, which is the same in every resample of the
images (ties are broken stably by insertion order). `BoxAP` therefore matches
every image once and `compute(idx)` only re-sorts the stored TP flags of the
resampled images and integrates the precision/recall curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from chexcli.boxes import as_boxes, box_iou_cxcywh

IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
REPORTED_THRESHOLDS: tuple[float, ...] = (0.1, 0.3, 0.5)
# the reference passes np.arange(0, 1.01, 0.01); keep the exact float values
RECALL_THRESHOLDS: np.ndarray = np.arange(0.0, 1.01, 0.01)


@dataclass
class ImageBoxes:
    """Predictions and targets of one AP "image".

    pred_boxes (P, 4) cxcywh, pred_scores (P,), pred_labels (P,) int;
    gt_boxes (G, 4) cxcywh, gt_labels (G,) int.
    """

    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    pred_labels: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray

    @classmethod
    def make(cls, pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels) -> "ImageBoxes":
        pb = as_boxes(pred_boxes)
        gb = as_boxes(gt_boxes)
        ps = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        pl = np.asarray(pred_labels, dtype=np.int64).reshape(-1)
        gl = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
        if not (len(pb) == len(ps) == len(pl)) or len(gb) != len(gl):
            raise ValueError("boxes, scores and labels must have the same length")
        return cls(pb, ps, pl, gb, gl)


def match_image(img: ImageBoxes, thresholds: Sequence[float] = IOU_THRESHOLDS) -> tuple[np.ndarray, np.ndarray]:
    """Soft greedy matching of one image for every threshold.

    Returns (order (P,), tp (P, T) bool): `order` sorts the predictions by
    descending score (stable), `tp[k, j]` is whether prediction `order[k]`
    is a true positive at `thresholds[j]`.
    """
    order = np.argsort(-img.pred_scores, kind="stable")
    n_t = len(thresholds)
    tp = np.zeros((len(order), n_t), dtype=bool)
    if len(order) == 0 or len(img.gt_labels) == 0:
        return order, tp
    labels = img.pred_labels[order]
    boxes = img.pred_boxes[order]
    for c in np.unique(labels):
        pidx = np.nonzero(labels == c)[0]
        gidx = np.nonzero(img.gt_labels == c)[0]
        if len(gidx) == 0:
            continue
        iou = box_iou_cxcywh(boxes[pidx], img.gt_boxes[gidx])  # (p, g)
        gt_order = np.argsort(-iou, axis=1, kind="stable")
        for j, t in enumerate(thresholds):
            matched = np.zeros(len(gidx), dtype=bool)
            for row, k in enumerate(pidx):
                for g in gt_order[row]:
                    if not iou[row, g] > t:
                        break
                    if not matched[g]:
                        matched[g] = True
                        tp[k, j] = True
                        break
    return order, tp


def average_precision(tp_sorted: np.ndarray, n_gt: int) -> np.ndarray:
    """101-point interpolated AP from TP flags in score order.

    tp_sorted: (P, T) bool, predictions of one class sorted by descending
    score; n_gt: number of GT boxes of the class. Returns (T,) AP values
    (0 where n_gt == 0 or P == 0).
    """
    n_t = tp_sorted.shape[1]
    if n_gt == 0 or tp_sorted.shape[0] == 0:
        return np.zeros(n_t)
    tp_cum = np.cumsum(tp_sorted, axis=0, dtype=np.float64)
    rank = np.arange(1, tp_sorted.shape[0] + 1, dtype=np.float64)[:, None]
    precision = tp_cum / rank
    recall = tp_cum / max(n_gt, 1)
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    ap = np.empty(n_t)
    n = len(rank)
    for j in range(n_t):
        pos = np.searchsorted(recall[:, j], RECALL_THRESHOLDS, side="left")
        vals = np.where(pos < n, envelope[np.minimum(pos, n - 1), j], 0.0)
        ap[j] = vals.mean()
    return ap


def summarize_ap(ap: np.ndarray, class_names: Sequence[str], thresholds: Sequence[float] = IOU_THRESHOLDS,
                 per_class: bool = True) -> dict[str, float]:
    """Reference keys from an AP table ap (C, T)."""
    out = {"AP/mAP": float(ap.mean(axis=0).mean())}
    for t in REPORTED_THRESHOLDS:
        if t in thresholds:
            out[f"AP/AP@{t}"] = float(ap[:, list(thresholds).index(t)].mean())
    if per_class:
        for c, name in enumerate(class_names):
            out[f"AP/classes/mAP_{name}"] = float(ap[c].mean())
    return out


class BoxAP:
    """Reference box AP over units that can be resampled.

    images: the AP images in order; units: number of consecutive AP images
    forming one resampling unit (default: every image is a unit; in sentence
    grounding one image unit holds all its sentences). class_names (C,).
    """

    def __init__(self, images: Sequence[ImageBoxes], class_names: Sequence[str],
                 units: Sequence[int] | None = None, thresholds: Sequence[float] = IOU_THRESHOLDS,
                 per_class_keys: bool = True):
        self.class_names = list(class_names)
        self.thresholds = tuple(thresholds)
        self.per_class_keys = per_class_keys
        n_cls = len(self.class_names)
        if units is None:
            units = [1] * len(images)
        if sum(units) != len(images) or any(u < 1 for u in units):
            raise ValueError("units must be positive and add up to the number of images")
        labels, scores, tps, img_pred_counts = [], [], [], []
        gt_counts = np.zeros((len(images), n_cls), dtype=np.int64)
        for i, img in enumerate(images):
            if len(img.pred_labels) and (img.pred_labels.min() < 0 or img.pred_labels.max() >= n_cls):
                raise ValueError("prediction label out of range")
            if len(img.gt_labels) and (img.gt_labels.min() < 0 or img.gt_labels.max() >= n_cls):
                raise ValueError("target label out of range")
            order, tp = match_image(img, self.thresholds)
            labels.append(img.pred_labels[order])
            scores.append(img.pred_scores[order])
            tps.append(tp)
            img_pred_counts.append(len(order))
            gt_counts[i] = np.bincount(img.gt_labels, minlength=n_cls)
        n_t = len(self.thresholds)
        self.pred_label = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.pred_score = np.concatenate(scores) if scores else np.zeros(0)
        self.pred_tp = np.concatenate(tps) if tps else np.zeros((0, n_t), bool)
        bounds = np.cumsum([0] + list(units))
        img_offsets = np.cumsum([0] + img_pred_counts)
        self.unit_start = img_offsets[bounds[:-1]]
        self.unit_count = img_offsets[bounds[1:]] - self.unit_start
        self.unit_gt = np.add.reduceat(gt_counts, bounds[:-1], axis=0) if len(units) else gt_counts[:0]
        self.n_units = len(units)

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        """Flat prediction indices of the units idx, in unit order."""
        counts = self.unit_count[idx]
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        ends = np.cumsum(counts)
        shift = np.repeat(self.unit_start[idx] - (ends - counts), counts)
        return np.arange(total) + shift

    def ap_table(self, idx=None) -> np.ndarray:
        """AP (C, T) on the units idx (None: all units once, in order)."""
        idx = np.arange(self.n_units) if idx is None else np.asarray(idx, dtype=np.int64)
        flat = self._gather(idx)
        labels = self.pred_label[flat]
        order = np.argsort(-self.pred_score[flat], kind="stable")
        order = order[np.argsort(labels[order], kind="stable")]
        labels = labels[order]
        tp = self.pred_tp[flat[order]]
        n_gt = self.unit_gt[idx].sum(axis=0)
        bounds = np.searchsorted(labels, np.arange(len(self.class_names) + 1))
        ap = np.zeros((len(self.class_names), len(self.thresholds)))
        for c in range(len(self.class_names)):
            ap[c] = average_precision(tp[bounds[c]:bounds[c + 1]], int(n_gt[c]))
        return ap

    def compute(self, idx=None) -> dict[str, float]:
        """Reference AP keys on the units idx."""
        return summarize_ap(self.ap_table(idx), self.class_names, self.thresholds, self.per_class_keys)
