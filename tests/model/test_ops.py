"""Hand-checked numeric cases for the model's building blocks."""

import math

import pytest
import torch

from chexcli.boxes import clip_boxes, cxcywh_to_xyxy, hull_box, xyxy_to_cxcywh
from chexcli.model.roi_pool import soft_roi_pool
from chexcli.model.classify import classify_features
from chexcli.model.layers import block_diagonal, combine_self_attention_masks


def test_soft_roi_pool_is_a_max_normalised_gaussian_sum():
    feats = torch.ones(1, 7, 7, 2)
    feats[..., 1] = 0.0
    feats[0, 3, 3, 1] = 5.0  # only the centre patch carries the second channel
    box = torch.tensor([[[3.5 / 7, 3.5 / 7, 1 / 7, 1 / 7]]])  # centred on patch (3, 3), one patch wide
    pooled = soft_roi_pool(feats, box, beta=2.0)
    axis = sum(math.exp(-(k**2)) for k in range(-3, 4))
    assert pooled.shape == (1, 1, 2)
    assert pooled[0, 0, 0].item() == pytest.approx(axis**2, rel=1e-6)  # a sum, not a mean
    assert pooled[0, 0, 1].item() == pytest.approx(5.0, rel=1e-6)  # peak weight is exactly 1


def test_soft_roi_pool_peak_is_one_even_off_grid():
    feats = torch.zeros(1, 7, 7, 1)
    feats[0, 0, 6, 0] = 1.0  # top-right patch
    box = torch.tensor([[[0.99, 0.01, 0.05, 0.05]]])  # nearest grid point is that patch
    assert soft_roi_pool(feats, box)[0, 0, 0].item() == pytest.approx(1.0, rel=1e-5)


def test_box_conversions_and_clipping():
    b = torch.tensor([0.5, 0.4, 0.2, 0.6])
    assert torch.allclose(cxcywh_to_xyxy(b), torch.tensor([0.4, 0.1, 0.6, 0.7]))
    assert torch.allclose(xyxy_to_cxcywh(cxcywh_to_xyxy(b)), b)
    outside = torch.tensor([0.95, 0.05, 0.2, 0.2])  # corners (0.85, -0.05, 1.05, 0.15)
    assert torch.allclose(clip_boxes(outside), torch.tensor([0.925, 0.075, 0.15, 0.15]), atol=1e-6)


def test_hull_box_spans_all_regions():
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.2, 0.4], [0.5, 0.5, 0.1, 0.1]])
    assert torch.allclose(hull_box(boxes), torch.tensor([0.45, 0.45, 0.5, 0.5]), atol=1e-6)


def test_attention_mask_rule_matches_reference_cases():
    block = block_diagonal(2, 2)  # queries {0,1} and {2,3}
    valid = torch.tensor([[True, False, True, True]])
    assert combine_self_attention_masks(None, None) is None
    assert torch.equal(combine_self_attention_masks(block, None), block)
    assert torch.equal(combine_self_attention_masks(None, valid)[0, 0].expand(4, 4), valid.expand(4, 4))
    both = combine_self_attention_masks(block, valid)[0, 0]
    # padded key 1 belongs to query 0: hidden from tokens 0 and 1 only; query 1's tokens still see it
    expected = torch.tensor([
        [True, False, True, True],
        [True, False, True, True],
        [True, True, True, True],
        [True, True, True, True],
    ])
    assert torch.equal(both, expected)
    all_valid = combine_self_attention_masks(block, torch.ones(1, 4, dtype=torch.bool))
    assert bool(all_valid.all())  # an all-true query mask means full attention


def test_classification_is_a_sigmoid_of_cosine_difference():
    f = torch.tensor([[2.0, 0.0]])
    p = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[0.0, 3.0]])
    probs, preds = classify_features(f, p, n)
    assert probs.item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-6)
    assert bool(preds.item())
    probs_t, _ = classify_features(f, p, n, temperature=0.5, softmax=True)
    assert probs_t.item() == pytest.approx(1 / (1 + math.exp(-2)), rel=1e-6)
    raw, _ = classify_features(f, p, n, normalized=False)
    assert raw.item() == pytest.approx(1 / (1 + math.exp(-2)), rel=1e-6)
    with pytest.raises(ValueError):
        classify_features(f, p[0], n)
