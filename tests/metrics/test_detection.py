"""Reference box AP on hand-computed cases, and BoxAP == the naive oracle."""

import numpy as np
import pytest

from chexcli.metrics.bootstrap import draw_indices
from chexcli.metrics.detection import IOU_THRESHOLDS, BoxAP, ImageBoxes, average_precision
from chexcli.metrics.naive_ap import naive_ap_table, naive_box_ap
from chexcli.metrics.synthetic import random_detection_set

NAMES = ["cls/A", "cls/B"]


def img(pred, scores, plabels, gt, glabels):
    return ImageBoxes.make(pred, scores, plabels, gt, glabels)


def test_two_images_known_ap():
    # class 0: p1 exact (IoU 1), p2 a duplicate (IoU 0.54 to the same GT), p3 IoU 0.54 to the GT of image 2
    # class 1: one prediction, no GT anywhere -> AP 0 and still averaged in
    images = [
        img([[0.5, 0.5, 0.2, 0.2], [0.56, 0.5, 0.2, 0.2]], [0.9, 0.8], [0, 0], [[0.5, 0.5, 0.2, 0.2]], [0]),
        img([[0.36, 0.3, 0.2, 0.2], [0.5, 0.5, 0.1, 0.1]], [0.7, 0.5], [0, 1], [[0.3, 0.3, 0.2, 0.2]], [0]),
    ]
    ap = BoxAP(images, NAMES).ap_table()
    low = (51 + 50 * 2 / 3) / 101  # t <= 0.5: TP FP TP, recall .5 .5 1
    high = 51 / 101  # t >= 0.6: IoU 0.54 is not > t
    np.testing.assert_allclose(ap[0], [low] * 5 + [high] * 2, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ap[1], 0.0)
    out = BoxAP(images, NAMES).compute()
    assert out["AP/AP@0.1"] == pytest.approx(low / 2)
    assert out["AP/AP@0.5"] == pytest.approx(low / 2)
    assert out["AP/mAP"] == pytest.approx((5 * low + 2 * high) / 7 / 2)
    assert out["AP/classes/mAP_cls/A"] == pytest.approx((5 * low + 2 * high) / 7)
    assert out["AP/classes/mAP_cls/B"] == 0.0
    assert set(out) == {"AP/mAP", "AP/AP@0.1", "AP/AP@0.3", "AP/AP@0.5", "AP/classes/mAP_cls/A",
                        "AP/classes/mAP_cls/B"}


def test_soft_matching_tries_next_gt():
    # p1 takes GT1; p2 prefers GT1 (IoU 2/3) but it is taken, GT2 has IoU 0.538
    gts = [[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]]
    images = [img([[0.5, 0.5, 0.2, 0.2], [0.54, 0.5, 0.2, 0.2]], [0.9, 0.8], [0, 0], gts, [0, 0])]
    ap = BoxAP(images, ["a"]).ap_table()[0]
    np.testing.assert_allclose(ap, [1.0] * 5 + [51 / 101] * 2, atol=1e-12)


def test_iou_threshold_is_strict():
    gt = [[0.5, 0.5, 0.5, 0.5]]
    pred = [[0.5, 0.5, 0.5, 0.25]]  # IoU exactly 0.5
    ap = BoxAP([img(pred, [1.0], [0], gt, [0])], ["a"]).ap_table()[0]
    np.testing.assert_allclose(ap, [1, 1, 1, 1, 0, 0, 0])


def test_no_predictions_and_no_gt():
    images = [img([], [], [], [[0.5, 0.5, 0.1, 0.1]], [0]), img([[0.5, 0.5, 0.1, 0.1]], [0.3], [1], [], [])]
    out = BoxAP(images, ["a", "b"]).compute()
    assert out["AP/mAP"] == 0.0


def test_average_precision_interpolation():
    # recall .25 .25 .5 .5 with 4 GT; precision 1 .5 2/3 .5 -> envelope 1 2/3 2/3 .5
    tp = np.array([[1], [0], [1], [0]], bool)
    ap = average_precision(tp, 4)[0]
    assert ap == pytest.approx((26 * 1 + 25 * 2 / 3) / 101)


@pytest.mark.parametrize("levels", [None, 5])
def test_matches_naive_oracle_point_and_resamples(levels):
    images = random_detection_set(60, 3, seed=3, score_levels=levels)
    names = ["a", "b", "c"]
    metric = BoxAP(images, names)
    assert metric.compute() == naive_box_ap(images, names)  # identical point estimate
    for idx in draw_indices(len(images), 3):
        np.testing.assert_array_equal(metric.ap_table(idx), naive_ap_table([images[i] for i in idx], 3))


def test_units_group_images():
    images = random_detection_set(12, 1, seed=5)
    grouped = BoxAP(images, ["s"], units=[3, 4, 5])
    idx = np.array([2, 0, 2])
    flat = [images[i] for i in list(range(7, 12)) + list(range(0, 3)) + list(range(7, 12))]
    np.testing.assert_array_equal(grouped.ap_table(idx), naive_ap_table(flat, 1))


def test_thresholds_constant():
    assert IOU_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
