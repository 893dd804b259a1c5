"""AUROC / F1 / MCC / ranking AP and the two RC metric groups, by hand."""

import numpy as np
import pytest

from chexcli.metrics.classification import (MultiClassMetrics, RegionMultiLabelMetrics, WeightedAUROC,
                                            binary_auroc, binary_mcc, f1_from_counts,
                                            label_ranking_ap_per_sample, mcc_from_confusion, sanitize,
                                            unit_weights)


def test_binary_auroc_cases():
    assert binary_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)  # a tie counts 1/2
    assert binary_auroc([0.2, 0.9, 0.9, 0.1], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert binary_auroc([0.2, 0.3], [0, 0]) == 0.0  # no positive -> 0, not NaN
    assert binary_auroc([0.2, 0.3], [1, 1]) == 0.0


def test_weighted_auroc_equals_duplication_and_mask():
    rng = np.random.default_rng(1)
    s = np.round(rng.random((30, 4)), 1)
    y = rng.random((30, 4)) < 0.4
    mask = rng.random((30, 4)) < 0.8
    idx = rng.integers(0, 30, 30)
    got = WeightedAUROC(s, y, mask).compute(unit_weights(idx, 30))
    for k in range(4):
        keep = mask[idx, k]
        assert got[k] == pytest.approx(binary_auroc(s[idx, k][keep], y[idx, k][keep]), abs=1e-12)


def test_f1_and_mcc():
    np.testing.assert_allclose(f1_from_counts([2, 0], [1, 0], [1, 0]), [4 / 6, 0.0])
    assert binary_mcc(tp=4, fp=1, fn=2, tn=5) == pytest.approx(18 / np.sqrt(5 * 6 * 6 * 7))
    conf = np.array([[3, 1, 0], [0, 2, 1], [1, 0, 2]])  # rows truth
    c, s = 7, 10
    t, p = np.array([4, 3, 3]), np.array([4, 3, 3])
    expected = (c * s - (t * p).sum()) / np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    assert mcc_from_confusion(conf) == pytest.approx(expected)
    assert mcc_from_confusion(np.array([[5, 0], [0, 0]])) == 0.0


def test_label_ranking_ap():
    scores = np.array([[0.9, 0.2, 0.5], [0.1, 0.4, 0.3], [0.3, 0.3, 0.3], [0.1, 0.2, 0.3]])
    targets = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    # row 0: both positives on top -> 1; row 1: positive ranked 3rd -> 1/3
    # row 2: all tied, the positive has rank 3 -> 1/3; row 3: no positive -> 1
    np.testing.assert_allclose(label_ranking_ap_per_sample(scores, targets), [1, 1 / 3, 1 / 3, 1])


def test_multiclass_metrics():
    probs = np.array([[0.8, 0.1, 0.3], [0.2, 0.7, 0.1], [0.6, 0.5, 0.2], [0.1, 0.2, 0.9]])
    targets = np.array([0, 1, 1, 0])
    out = MultiClassMetrics(probs, targets, ["ms/Lung Opacity", "b", "c"]).compute()
    # OvR AUROCs: class 0 scores .8 .2 .6 .1 pos {0,3}: pairs (.8>.2,.8>.6,.1<.2,.1<.6) = 2/4
    # class 1 scores .1 .7 .5 .2 pos {1,2}: all 4 pairs correct -> 1; class 2: no positive -> 0
    assert out["auroc_cls/ms-Lung_Opacity"] == pytest.approx(0.5)
    assert out["auroc_cls/b"] == pytest.approx(1.0)
    assert out["auroc_cls/c"] == 0.0
    assert out["auroc"] == pytest.approx(0.5)
    # predictions 0 1 0 2 -> recall class0 1/2, class1 1/2, class2 (no support) 0
    assert out["acc"] == pytest.approx(1 / 3)
    conf = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]])
    assert out["mcc"] == pytest.approx(mcc_from_confusion(conf))


def test_region_multilabel_metrics():
    # 3 images, 2 regions, 1 class; region 1 absent in image 2
    probs = np.array([[[0.9], [0.2]], [[0.3], [0.6]], [[0.7], [0.99]]])
    targets = np.array([[[1], [0]], [[0], [1]], [[0], [1]]])  # the absent target is ignored
    present = np.array([[1, 1], [1, 1], [1, 0]], bool)
    out = RegionMultiLabelMetrics(probs, targets, present, ["cig/x y"]).compute()
    # region 0: scores .9 .3 .7, pos {0}: AUROC 1, n=1; F1: preds 1 0 1 -> tp1 fp1 -> 2/3
    # region 1: present images 0,1: scores .2 .6, pos {1}: AUROC 1, n=1; F1 preds 0 1 -> 1
    assert out["loc_auroc/weighted"] == pytest.approx(1.0)
    assert out["loc_auroc_cls/cig-x_y"] == pytest.approx(1.0)
    assert out["loc_f1/macro"] == pytest.approx((2 / 3 + 1) / 2)
    # image level: score = max over present regions .9 .6 .7, target 1 1 0 -> AUROC 0.5
    assert out["nonloc_auroc"] == pytest.approx(0.5)
    # image preds 1 1 1, targets 1 1 0: F1 = 4/5; pooled MCC tp2 fp1 fn0 tn0 -> 0
    assert out["nonloc_f1"] == pytest.approx(0.8)
    assert out["nonloc_mcc_macro"] == 0.0
    assert out["nonloc_label_rank_avg_prec"] == 1.0  # one label: all/none positive
    assert out["stats/anat_per_sample"] == pytest.approx(2 / 3)
    assert out["stats/cls_per_sample"] == pytest.approx(2 / 3)
    assert out["stats/count_per_sample"] == pytest.approx(2 / 3)


def test_region_weighted_auroc_weights_by_positives():
    rng = np.random.default_rng(0)
    probs = rng.random((20, 2, 2))
    targets = rng.random((20, 2, 2)) < 0.3
    present = np.ones((20, 2), bool)
    out = RegionMultiLabelMetrics(probs, targets, present, ["a", "b"]).compute()
    num = den = 0.0
    for a in range(2):
        for c in range(2):
            n = targets[:, a, c].sum()
            num += n * binary_auroc(probs[:, a, c], targets[:, a, c])
            den += n
    assert out["loc_auroc/weighted"] == pytest.approx(num / den)


def test_sanitize():
    assert sanitize("cig/af/pleural/parenchymal scarring") == "cig-af-pleural-parenchymal_scarring"
