"""Classification metrics with the reference's (torchmetrics 0.11) semantics,
docs/evaluation.md#classification-metrics, written without torchmetrics.

All metrics are sums over units, so they are computed from unit weights
w (N,) = how often each unit was drawn (ones for the point estimate): counts
become weighted counts and AUROC a weighted Mann-Whitney statistic over a
score order sorted once. With unit weights the values equal the plain
definitions exactly.

* AUROC: exact ROC area (ties count 1/2); a label without positives or
  without negatives has AUROC 0 and is averaged in.
* F1 = 2TP / (2TP + FP + FN), 0 when the denominator is 0.
* MCC = (c s - sum_k t_k p_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)), 0 if undefined.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def sanitize(name: str) -> str:
    """Class name as the reference writes it in classification keys."""
    return name.replace(" ", "_").replace("/", "-")


def unit_weights(idx, n_units: int) -> np.ndarray:
    """Multiplicity (N,) of every unit in idx (None: all ones)."""
    if idx is None:
        return np.ones(n_units)
    return np.bincount(np.asarray(idx, dtype=np.int64), minlength=n_units).astype(np.float64)


class WeightedAUROC:
    """Column-wise AUROC of scores (N, K) vs targets (N, K), over entries with
    mask (N, K) true, for any unit weights (N,).

    The score order of each column and its tie groups are computed once.
    """

    def __init__(self, scores: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None):
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 1:
            scores, targets = scores[:, None], np.asarray(targets)[:, None]
            mask = None if mask is None else np.asarray(mask)[:, None]
        n, k = scores.shape
        mask = np.ones((n, k), bool) if mask is None else np.asarray(mask, bool)
        targets = np.asarray(targets).astype(bool) & mask
        s = np.where(mask, scores, np.inf)  # absent entries sort last and never tie
        order = np.argsort(s, axis=0, kind="stable")
        s_sorted = np.take_along_axis(s, order, axis=0)
        new_group = np.ones((n, k), bool)
        new_group[1:] = s_sorted[1:] != s_sorted[:-1]
        rows = np.arange(n)[:, None].repeat(k, axis=1)
        # start of each entry's tie group and (exclusive) end
        g0 = np.maximum.accumulate(np.where(new_group, rows, 0), axis=0)
        last = np.ones((n, k), bool)
        last[:-1] = new_group[1:]
        g1 = np.minimum.accumulate(np.where(last, rows + 1, n)[::-1], axis=0)[::-1]
        self.order, self.g0, self.g1 = order, g0, g1
        self.pos_sorted = np.take_along_axis(targets, order, axis=0).astype(np.float64)
        self.neg_sorted = np.take_along_axis(mask & ~targets, order, axis=0).astype(np.float64)
        self.shape = (n, k)

    def compute(self, weights: np.ndarray) -> np.ndarray:
        """(K,) AUROC for unit weights (N,)."""
        w = np.asarray(weights, dtype=np.float64)[self.order]
        pos, neg = w * self.pos_sorted, w * self.neg_sorted
        cum = np.concatenate([np.zeros((1, self.shape[1])), np.cumsum(neg, axis=0)], axis=0)
        below = np.take_along_axis(cum, self.g0, axis=0)
        upto = np.take_along_axis(cum, self.g1, axis=0)
        num = (pos * (below + 0.5 * (upto - below))).sum(axis=0)
        n_pos, n_neg = pos.sum(axis=0), neg.sum(axis=0)
        denom = n_pos * n_neg
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), 0.0)


def binary_auroc(scores, targets) -> float:
    """AUROC of one score vector vs binary targets (0 without both classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(WeightedAUROC(scores, targets).compute(np.ones(len(scores)))[0])


def f1_from_counts(tp, fp, fn) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN), 0 where the denominator is 0."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), 0.0)


def mcc_from_confusion(conf: np.ndarray) -> float:
    """Matthews correlation of a (K, K) confusion matrix (rows = truth); 0 if undefined."""
    conf = np.asarray(conf, dtype=np.float64)
    c, s = np.trace(conf), conf.sum()
    t, p = conf.sum(axis=1), conf.sum(axis=0)
    cov_ytyp = c * s - (t * p).sum()
    denom = (s * s - (p * p).sum()) * (s * s - (t * t).sum())
    return float(cov_ytyp / np.sqrt(denom)) if denom > 0 else 0.0


def binary_mcc(tp: float, fp: float, fn: float, tn: float) -> float:
    """MCC of a 2x2 confusion (pooled counts)."""
    return mcc_from_confusion(np.array([[tn, fp], [fn, tp]]))


def _rank_max(values: np.ndarray) -> np.ndarray:
    """Row-wise 'max' ranks: rank[i, j] = #{k: values[i, k] <= values[i, j]}."""
    srt = np.sort(values, axis=1)
    return np.stack([np.searchsorted(srt[i], values[i], side="right") for i in range(len(values))]) \
        if len(values) else np.zeros_like(values, dtype=np.int64)


def label_ranking_ap_per_sample(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Label-ranking average precision of every sample (N,).

    Per sample: mean over positive labels j of
    #{positive k: s_k >= s_j} / #{k: s_k >= s_j}; 1 when no or all labels are positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    n, k = scores.shape
    rank_all = _rank_max(-scores)
    rank_pos = _rank_max(np.where(targets, -scores, np.inf))
    n_pos = targets.sum(axis=1)
    ratio = np.where(targets, rank_pos / np.maximum(rank_all, 1), 0.0)
    val = ratio.sum(axis=1) / np.maximum(n_pos, 1)
    return np.where((n_pos == 0) | (n_pos == k), 1.0, val)


class MultiClassMetrics:
    """Multi-class classification of units (MS-CXR GT boxes), docs/evaluation.md#classification-metrics.

    probs (N, C) class probabilities (not renormalised), targets (N,) int.
    Keys: `auroc` (macro one-vs-rest), `acc` (macro recall over all classes),
    `mcc` (multi-class), `auroc_cls/<class>`.
    """

    def __init__(self, probs, targets, class_names: Sequence[str]):
        probs = np.asarray(probs, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.int64)
        self.class_names = list(class_names)
        n_cls = len(self.class_names)
        self.n_units = len(targets)
        onehot = np.zeros((self.n_units, n_cls), bool)
        onehot[np.arange(self.n_units), targets] = True
        self.auroc = WeightedAUROC(probs.reshape(self.n_units, n_cls), onehot)
        preds = probs.argmax(axis=1) if self.n_units else np.zeros(0, np.int64)
        self.cell = targets * n_cls + preds  # confusion cell of each unit
        self.n_cls = n_cls

    def compute(self, idx=None) -> dict[str, float]:
        w = unit_weights(idx, self.n_units)
        conf = np.bincount(self.cell, weights=w, minlength=self.n_cls ** 2).reshape(self.n_cls, self.n_cls)
        support = conf.sum(axis=1)
        recall = np.where(support > 0, np.diag(conf) / np.maximum(support, 1e-300), 0.0)
        per_class = self.auroc.compute(w)
        out = {"auroc": float(per_class.mean()), "acc": float(recall.mean()), "mcc": mcc_from_confusion(conf)}
        for name, v in zip(self.class_names, per_class):
            out[f"auroc_cls/{sanitize(name)}"] = float(v)
        return out


class RegionMultiLabelMetrics:
    """Multi-label classification of regions (Chest ImaGenome), docs/evaluation.md#classification-metrics.

    probs (N, A, C), targets (N, A, C) {0, 1}, present (N, A) bool; unit = image.
    """

    def __init__(self, probs, targets, present, class_names: Sequence[str], threshold: float = 0.5):
        probs = np.asarray(probs, dtype=np.float64)
        present = np.asarray(present, dtype=bool)
        n, a, c = probs.shape
        m3 = np.broadcast_to(present[:, :, None], (n, a, c))
        probs = np.where(m3, probs, 0.0)
        y = np.asarray(targets).astype(bool) & m3
        yhat = (probs > threshold) & m3
        self.class_names = list(class_names)
        self.n_units, self.shape = n, (a, c)
        flat = (n, a * c)
        self.pos = y.reshape(flat).astype(np.float64)
        self.tp = (y & yhat).reshape(flat).astype(np.float64)
        self.fp = (~y & yhat).reshape(flat).astype(np.float64)
        self.fn = (y & ~yhat).reshape(flat).astype(np.float64)
        self.loc_auroc = WeightedAUROC(probs.reshape(flat), y.reshape(flat), m3.reshape(flat))
        img_score = probs.max(axis=1)  # (N, C), absent regions count as 0
        img_y, img_yhat = y.any(axis=1), yhat.any(axis=1)
        self.img_tp = (img_y & img_yhat).astype(np.float64)
        self.img_fp = (~img_y & img_yhat).astype(np.float64)
        self.img_fn = (img_y & ~img_yhat).astype(np.float64)
        self.img_tn = (~img_y & ~img_yhat).astype(np.float64)
        self.nonloc_auroc = WeightedAUROC(img_score, img_y)
        self.lrap = label_ranking_ap_per_sample(img_score, img_y) if n else np.zeros(0)
        self.anat_pos = y.any(axis=2).sum(axis=1).astype(np.float64)  # (N,)
        self.cls_pos = img_y.sum(axis=1).astype(np.float64)
        self.count = y.sum(axis=(1, 2)).astype(np.float64)

    def compute(self, idx=None) -> dict[str, float]:
        w = unit_weights(idx, self.n_units)
        a, c = self.shape
        n_ac = (w @ self.pos).reshape(a, c)
        auroc_ac = self.loc_auroc.compute(w).reshape(a, c)
        f1_ac = f1_from_counts(w @ self.tp, w @ self.fp, w @ self.fn).reshape(a, c)
        n_c = n_ac.sum(axis=0)
        auroc_c = (n_ac * auroc_ac).sum(axis=0) / np.maximum(n_c, 1)
        f1_c = (n_ac * f1_ac).sum(axis=0) / np.maximum(n_c, 1)
        n_img = max(w.sum(), 1.0)
        img_f1 = f1_from_counts(w @ self.img_tp, w @ self.img_fp, w @ self.img_fn)
        out = {
            "loc_auroc/macro": float(auroc_c.mean()),
            "loc_auroc/weighted": float((n_ac * auroc_ac).sum() / max(n_ac.sum(), 1)),
            "loc_f1/macro": float(f1_c.mean()),
            "nonloc_auroc": float(self.nonloc_auroc.compute(w).mean()),
            "nonloc_f1": float(img_f1.mean()),
            "nonloc_mcc_macro": binary_mcc(w @ self.img_tp.sum(1), w @ self.img_fp.sum(1),
                                           w @ self.img_fn.sum(1), w @ self.img_tn.sum(1)),
            "nonloc_label_rank_avg_prec": float(w @ self.lrap / n_img),
            "stats/anat_per_sample": float(w @ self.anat_pos / n_img),
            "stats/cls_per_sample": float(w @ self.cls_pos / n_img),
            "stats/count_per_sample": float(w @ self.count / n_img),
        }
        for name, v in zip(self.class_names, auroc_c):
            out[f"loc_auroc_cls/{sanitize(name)}"] = float(v)
        return out
