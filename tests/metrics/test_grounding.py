"""Sentence-grounding mask IoU on hand-computed pixel counts."""

import numpy as np
import pytest

from chexcli.metrics.grounding import GroundingIoU, SentenceBoxes, pixel_rects, union_inter_counts


def sentences():
    return [
        # GT 512x512; pred1 = GT (0.35), pred2 the right half-overlapping box (0.15)
        SentenceBoxes.make([[0.5, 0.5, 0.5, 0.5], [0.75, 0.5, 0.5, 0.5]], [0.35, 0.15], [[0.5, 0.5, 0.5, 0.5]]),
        # GT 256x256, an exact prediction with score 0.45
        SentenceBoxes.make([[0.25, 0.25, 0.25, 0.25]], [0.45], [[0.25, 0.25, 0.25, 0.25]]),
        # GT 256x256, no prediction
        SentenceBoxes.make([], [], [[0.5, 0.5, 0.25, 0.25]]),
    ]


def test_pooled_iou_hand_computed():
    out = GroundingIoU(sentences(), units=[2, 1]).compute()
    big, small = 512 * 512, 256 * 256
    iou = {0.1: (big + small) / (768 * 512 + small + small), 0.2: (big + small) / (big + 2 * small),
           0.3: (big + small) / (big + 2 * small), 0.4: small / (big + 2 * small), 0.5: 0.0}
    assert out["IoU"] == pytest.approx(iou[0.3])
    assert out["mIoU"] == pytest.approx(np.mean(list(iou.values())))
    assert out["bIoU"] == pytest.approx(max(iou.values()))
    assert iou[0.1] == pytest.approx(0.625)
    assert out["phrase/mIoU"] == pytest.approx(2 / 3)
    assert out["phrase/Acc@0.5"] == pytest.approx(2 / 3)


def test_resampling_units():
    m = GroundingIoU(sentences(), units=[2, 1])
    out = m.compute(np.array([1, 1]))  # only the empty-prediction sentence, twice
    assert out["mIoU"] == 0.0 and out["phrase/Acc@0.5"] == 0.0
    both = m.compute(np.array([0, 0]))
    assert both["IoU"] == pytest.approx(1.0)


def test_pixel_rule_truncates_and_clamps():
    r = pixel_rects([[0.1001 + 0.05, 0.5, 0.1, 1.2]])[0]
    # x0 = trunc(1024 * 0.1001) = 102, x1 = trunc(1024 * 0.2001) = 204; y clamped to [0, 1024]
    assert list(r) == [102, 0, 204, 1024]


def test_union_counts_match_bitmap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pb = np.concatenate([rng.uniform(0.2, 0.8, (3, 2)), rng.uniform(0.05, 0.4, (3, 2))], 1)
        gb = np.concatenate([rng.uniform(0.2, 0.8, (2, 2)), rng.uniform(0.05, 0.4, (2, 2))], 1)
        pr, gr = pixel_rects(pb, 64), pixel_rects(gb, 64)
        mp, mg = np.zeros((64, 64), bool), np.zeros((64, 64), bool)
        for x0, y0, x1, y1 in pr:
            mp[y0:y1, x0:x1] = True
        for x0, y0, x1, y1 in gr:
            mg[y0:y1, x0:x1] = True
        assert union_inter_counts(pr, gr) == ((mp & mg).sum(), (mp | mg).sum())
