"""chexcli.boxes: one set of box helpers for tensors and arrays."""

import numpy as np
import torch

from chexcli.boxes import (as_boxes, box_iou_cxcywh, box_iou_xyxy, clip_boxes, cxcywh_to_xyxy, generalized_box_iou,
                           paired_iou, xyxy_to_cxcywh)

CENTER = [[0.5, 0.4, 0.2, 0.6], [0.9, 0.1, 0.4, 0.4]]


def test_conversions_keep_the_kind_of_their_input():
    t = torch.tensor(CENTER)
    a = np.asarray(CENTER)
    assert isinstance(cxcywh_to_xyxy(t), torch.Tensor) and cxcywh_to_xyxy(t).shape == (2, 4)
    assert cxcywh_to_xyxy(a).dtype == np.float64
    np.testing.assert_allclose(cxcywh_to_xyxy(t).numpy(), cxcywh_to_xyxy(a), rtol=1e-6)
    np.testing.assert_allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(a)), a)
    assert cxcywh_to_xyxy(t[None]).shape == (1, 2, 4)  # a tensor keeps its leading shape
    assert as_boxes([]).shape == (0, 4) and cxcywh_to_xyxy([0.5, 0.5, 0.2, 0.2]).shape == (1, 4)


def test_clip_boxes_agrees_between_torch_and_numpy():
    np.testing.assert_allclose(clip_boxes(torch.tensor(CENTER)).numpy(), clip_boxes(CENTER), rtol=1e-6)
    np.testing.assert_allclose(clip_boxes(CENTER)[1], [0.85, 0.15, 0.3, 0.3])


def test_iou_matrix_single_boxes_and_pairs():
    a = np.array([0.0, 0.0, 0.4, 0.4])
    b = np.array([0.2, 0.2, 0.6, 0.6])
    assert box_iou_xyxy(a, b).shape == (1, 1)
    assert np.isclose(box_iou_xyxy(a, b)[0, 0], 0.04 / (0.16 + 0.16 - 0.04))
    assert box_iou_xyxy(a, np.zeros(4))[0, 0] == 0.0  # empty union -> 0
    np.testing.assert_allclose(np.diag(box_iou_cxcywh(CENTER, CENTER)), 1.0)
    np.testing.assert_allclose(paired_iou(CENTER, CENTER), [1.0, 1.0])


def test_generalized_iou_of_equal_and_distant_boxes():
    t = torch.tensor(CENTER)
    assert torch.allclose(generalized_box_iou(t, t), torch.ones(2))
    assert float(generalized_box_iou(t[0], t[1])) < 0
