"""COCO AP via pycocotools, labelled apart from the reference AP."""

import pytest

from chexcli.metrics.coco import coco_box_ap
from chexcli.metrics.detection import ImageBoxes


def test_perfect_and_half():
    perfect = [ImageBoxes.make([[0.5, 0.5, 0.2, 0.2]], [0.9], [0], [[0.5, 0.5, 0.2, 0.2]], [0])]
    out = coco_box_ap(perfect, 2)
    assert out["coco/AP"] == pytest.approx(1.0) and out["coco/AP50"] == pytest.approx(1.0)
    # one of two GT boxes found exactly (class 1 has no GT: left out of the COCO mean)
    half = [ImageBoxes.make([[0.5, 0.5, 0.2, 0.2]], [0.9], [0],
                            [[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]], [0, 0])]
    out = coco_box_ap(half, 2)
    assert out["coco/AP50"] == pytest.approx(51 / 101, abs=1e-6)  # precision 1 up to recall 0.5
    assert out["coco/AR100"] == pytest.approx(0.5)
    assert set(out) == {"coco/AP", "coco/AP50", "coco/AP75", "coco/AR100"}


def test_no_detections():
    out = coco_box_ap([ImageBoxes.make([], [], [], [[0.5, 0.5, 0.2, 0.2]], [0])], 1)
    assert out["coco/AP"] == 0.0
