"""Sentence-grounding metrics (docs/evaluation.md#sentence-grounding, docs/evaluation.md#mask-iou).

Reference (dataset-pooled) mask IoU: for a score threshold tau, every
sentence rasterises the union of its predicted boxes with score > tau and
the union of its GT boxes on a 1024 x 1024 grid (columns
trunc(1024 (x_c - w/2)) .. trunc(1024 (x_c + w/2)) - 1, clamped to the grid;
rows alike); intersections and unions are summed over all sentences and
IoU(tau) = sum(inter) / max(sum(union), 1).
`IoU` = IoU(0.3), `mIoU` = mean over tau in {0.1, ..., 0.5}, `bIoU` = max.

Per-phrase metrics of grounding papers (TransVG, MedRPG), ours: the IoU of
the sentence's top-scoring box with the union of its GT boxes on the same
grid (a plain box IoU when there is one GT box, 0 without prediction);
`phrase/mIoU` = mean over sentences, `phrase/Acc@0.5` = share with IoU >= 0.5.

Rectangles are integer pixel ranges, so unions are counted exactly on a
coordinate-compressed grid instead of a 1024^2 bitmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from chexcli.boxes import as_boxes, cxcywh_to_xyxy

GRID = 1024
SCORE_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
IOU_KEY_THRESHOLD = 0.3


@dataclass
class SentenceBoxes:
    """One grounded sentence: pred_boxes (P, 4) cxcywh, pred_scores (P,), gt_boxes (G, 4) cxcywh."""

    pred_boxes: np.ndarray
    pred_scores: np.ndarray
    gt_boxes: np.ndarray

    @classmethod
    def make(cls, pred_boxes, pred_scores, gt_boxes) -> "SentenceBoxes":
        return cls(as_boxes(pred_boxes), np.asarray(pred_scores, dtype=np.float64).reshape(-1), as_boxes(gt_boxes))


def pixel_rects(boxes, grid: int = GRID) -> np.ndarray:
    """(M, 4) cxcywh -> (M, 4) int pixel ranges [x0, x1) x [y0, y1) on the grid."""
    xyxy = cxcywh_to_xyxy(boxes) * grid
    rect = np.trunc(xyxy).astype(np.int64)
    return np.clip(rect, 0, grid)


def union_inter_counts(pred_rects: np.ndarray, gt_rects: np.ndarray) -> tuple[int, int]:
    """Pixel counts (|P ∩ G|, |P ∪ G|) of two unions of integer rectangles."""
    rects = np.concatenate([pred_rects, gt_rects]) if len(pred_rects) else gt_rects
    if len(rects) == 0:
        return 0, 0
    xs = np.unique(np.concatenate([rects[:, 0], rects[:, 2]]))
    ys = np.unique(np.concatenate([rects[:, 1], rects[:, 3]]))
    cell_w, cell_h = np.diff(xs), np.diff(ys)
    if len(cell_w) == 0 or len(cell_h) == 0:
        return 0, 0
    area = cell_h[:, None] * cell_w[None, :]

    def cover(rs: np.ndarray) -> np.ndarray:
        m = np.zeros((len(cell_h), len(cell_w)), dtype=bool)
        for x0, y0, x1, y1 in rs:
            i0, i1 = np.searchsorted(xs, [x0, x1])
            j0, j1 = np.searchsorted(ys, [y0, y1])
            m[j0:j1, i0:i1] = True
        return m

    p, g = cover(pred_rects), cover(gt_rects)
    return int(area[p & g].sum()), int(area[p | g].sum())


class GroundingIoU:
    """Pooled mask IoU and per-phrase IoU over resampling units.

    sentences: all sentences in unit order; units: sentences per unit (an image).
    """

    def __init__(self, sentences: Sequence[SentenceBoxes], units: Sequence[int] | None = None,
                 thresholds: Sequence[float] = SCORE_THRESHOLDS, grid: int = GRID):
        self.thresholds = tuple(thresholds)
        units = [1] * len(sentences) if units is None else list(units)
        if sum(units) != len(sentences) or any(u < 1 for u in units):
            raise ValueError("units must be positive and add up to the number of sentences")
        n_s, n_t = len(sentences), len(self.thresholds)
        inter = np.zeros((n_s, n_t))
        union = np.zeros((n_s, n_t))
        phrase = np.zeros(n_s)
        for s, sent in enumerate(sentences):
            pr, gr = pixel_rects(sent.pred_boxes, grid), pixel_rects(sent.gt_boxes, grid)
            for j, tau in enumerate(self.thresholds):
                inter[s, j], union[s, j] = union_inter_counts(pr[sent.pred_scores > tau], gr)
            if len(pr):
                top = int(np.argmax(sent.pred_scores))
                i, u = union_inter_counts(pr[top:top + 1], gr)
                phrase[s] = i / u if u > 0 else 0.0
        starts = np.cumsum([0] + units)[:-1]
        self.n_units = len(units)
        if self.n_units:
            self.unit_inter = np.add.reduceat(inter, starts, axis=0)
            self.unit_union = np.add.reduceat(union, starts, axis=0)
            self.unit_phrase_iou = np.add.reduceat(phrase, starts)
            self.unit_phrase_hit = np.add.reduceat((phrase >= 0.5).astype(np.float64), starts)
        else:
            self.unit_inter = self.unit_union = np.zeros((0, n_t))
            self.unit_phrase_iou = self.unit_phrase_hit = np.zeros(0)
        self.unit_sentences = np.asarray(units, dtype=np.float64)

    def compute(self, idx=None) -> dict[str, float]:
        idx = np.arange(self.n_units) if idx is None else np.asarray(idx, dtype=np.int64)
        ious = self.unit_inter[idx].sum(0) / np.maximum(self.unit_union[idx].sum(0), 1.0)
        n = max(self.unit_sentences[idx].sum(), 1.0)
        out = {}
        if IOU_KEY_THRESHOLD in self.thresholds:
            out["IoU"] = float(ious[self.thresholds.index(IOU_KEY_THRESHOLD)])
        out["mIoU"] = float(ious.mean()) if len(ious) else 0.0
        out["bIoU"] = float(ious.max()) if len(ious) else 0.0
        out["phrase/mIoU"] = float(self.unit_phrase_iou[idx].sum() / n)
        out["phrase/Acc@0.5"] = float(self.unit_phrase_hit[idx].sum() / n)
        return out
