"""Loss terms of training (docs/training.md#supervisors to #losses) against answers worked out by hand."""

import math

import pytest
import torch

from chexcli.boxes import generalized_box_iou
from chexcli.train.losses import (BoxCoefficients, anatomy_classification_loss, binary_focal_loss, box_cost,
                                  expected_count_subsample, generation_loss,
                                  global_contrastive_loss, masked_mse_loss, multi_box_loss, negative_class_subset,
                                  pathology_classification_loss, pathology_detection_loss,
                                  sentence_region_contrastive_loss, single_box_loss)

T = torch.tensor
E1, E2 = [1.0, 0.0], [0.0, 1.0]
BIG = [0.5, 0.5, 0.4, 0.4]  # corners (0.3, 0.3, 0.7, 0.7), area 0.16
SMALL = [0.5, 0.5, 0.2, 0.2]  # nested in BIG, area 0.04: IoU = GIoU = 0.25
NESTED_PAIR_LOSS = 5 * 0.4 + 2 * (1 - 0.25)  # L1 = 0.1 + 0.1 + 0.2 + 0.2 -> 3.5


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) < tol


# ------------------------------------------------------------------------------------------ boxes
def test_giou_identical_disjoint_nested_overlapping():
    assert close(generalized_box_iou(T(BIG), T(BIG)), 1.0)
    # corners (0.1,0.1,0.3,0.3) and (0.7,0.7,0.9,0.9): union 0.08, hull 0.64 -> 0 - 0.56 / 0.64
    assert close(generalized_box_iou(T([0.2, 0.2, 0.2, 0.2]), T([0.8, 0.8, 0.2, 0.2])), -0.875)
    assert close(generalized_box_iou(T(SMALL), T(BIG)), 0.25)
    # corners (0,0,.5,.5) and (.25,0,.75,.5): inter 0.125, union 0.375 = hull -> 1/3
    assert close(generalized_box_iou(T([0.25, 0.25, 0.5, 0.5]), T([0.5, 0.25, 0.5, 0.5])), 1 / 3)


def test_giou_broadcasts_and_degenerate_boxes_are_finite():
    out = generalized_box_iou(T([[BIG], [SMALL]]), T([BIG, SMALL]))  # (2, 1, 4) x (2, 4)
    assert out.shape == (2, 2)
    assert torch.allclose(out, T([[1.0, 0.25], [0.25, 1.0]]))
    zero = generalized_box_iou(T([0.0, 0.0, 0.0, 0.0]), T([0.0, 0.0, 0.0, 0.0]))
    assert torch.isfinite(zero) and close(zero, 0.0)


def test_box_cost_pairwise():
    pred = T([[BIG, SMALL]])  # (1, 2, 4)
    target = T([[BIG, SMALL, [0.2, 0.2, 0.2, 0.2]]])  # (1, 3, 4)
    cost = box_cost(pred, target)
    assert cost.shape == (1, 2, 3)
    assert close(cost[0, 0, 0], 0.0) and close(cost[0, 1, 1], 0.0)
    assert close(cost[0, 0, 1], NESTED_PAIR_LOSS) and close(cost[0, 1, 0], NESTED_PAIR_LOSS)
    assert close(box_cost(pred, target, BoxCoefficients(l1=1.0, giou=0.0))[0, 0, 1], 0.4)


def test_single_box_loss_every_box_to_the_target_present_only():
    pred = T([[[BIG, SMALL, BIG], [SMALL, SMALL, SMALL]]])  # (N=1, A=2, R=3, 4)
    target = T([[BIG, BIG]])
    total, count = single_box_loss(pred, target, T([[True, False]]))
    assert close(total, NESTED_PAIR_LOSS) and count == 3


def test_multi_box_loss_one_and_two_targets():
    pred = T([[[BIG, SMALL, BIG], [BIG, SMALL, [0.5, 0.5, 0.38, 0.4]], [BIG, BIG, BIG]]])  # (1, 3, 3, 4)
    weights = torch.ones(1, 3, 3)
    target = T([[[BIG, SMALL], [BIG, SMALL], [BIG, SMALL]]])  # (1, 3, 2, 4)
    mask = T([[[True, False], [True, True], [False, False]]])
    total, count = multi_box_loss(pred, weights, target, mask)
    # g=0: one target, all 3 boxes assigned to it -> (0 + 3.5 + 0) / 3
    # g=1: boxes 0, 1 match exactly; box 2 (x-width 0.38) is assigned to BIG: L1 0.02, GIoU 0.95
    near = 5 * 0.02 + 2 * (1 - 0.95)
    # g=2: no target, not counted
    assert count == 2
    assert close(total, NESTED_PAIR_LOSS / 3 + near / 3)


# ------------------------------------------------------------------------------------------ focal / pathology detection
def test_binary_focal_loss_hand_formula():
    prob = T([0.8, 0.8, 0.0, 1.0])
    target = T([1.0, 0.0, 0.0, 0.0])
    out = binary_focal_loss(prob, target, alpha=0.25)
    top = float(torch.tensor(1 - 1e-7))  # the clamp's upper bound in float32
    expected = [0.25 * 0.2**2 * -math.log(0.8), 0.75 * 0.8**2 * -math.log(0.2), 0.0,
                0.75 * 1.0 * -math.log(1 - top)]  # p = 1, y = 0: finite thanks to the clamp
    assert torch.allclose(out, T(expected), rtol=1e-4)


def test_pathology_detection_loss_hand_case():
    # N=1, C=2, R=3, M=2; class 0 has one box (BIG), class 1 is flagged but has none
    pred = T([[[SMALL, SMALL, SMALL], [BIG, BIG, BIG]]])
    weights = T([[[0.9, 0.5, 0.2], [0.1, 0.1, 0.1]]])
    cls_prob = torch.full((1, 2, 3), 0.5)
    target = T([[[BIG, BIG], [BIG, BIG]]])
    target_mask = T([[[True, False], [False, False]]])
    out = pathology_detection_loss(pred, weights, cls_prob, target, target_mask, T([[True, True]]),
                                   cheapest_matched=True)
    # box: class 0 -> mean of three 3.5 pairs; class 1 -> 0; divided by 2 flagged classes
    assert close(out["box_loss"], NESTED_PAIR_LOSS / 2)
    # matched: only box 0 of class 0 (highest weight -> cheapest); n_all = 6, n_pos = 1 -> alpha = 6/8
    a = 0.75

    def fl(p, y):
        return (a if y else 1 - a) * (1 - (p if y else 1 - p)) ** 2 * -math.log(p if y else 1 - p)

    c0 = (fl(0.9, 1) + fl(0.5, 0) + fl(0.2, 0)) / 3
    c1 = fl(0.1, 0)
    assert close(out["weights_loss"], (c0 + c1) / 2)
    assert close(out["total"], out["box_loss"] + 3 * out["weights_loss"])


def test_pathology_detection_loss_masks_unflagged_classes():
    pred = T([[[SMALL, SMALL, SMALL], [SMALL, SMALL, SMALL]]])
    weights = torch.full((1, 2, 3), 0.5)
    target = T([[[BIG], [BIG]]])
    target_mask = T([[[True], [True]]])
    out = pathology_detection_loss(pred, weights, weights, target, target_mask, T([[True, False]]))
    assert close(out["box_loss"], NESTED_PAIR_LOSS)  # class 1 not flagged: neither numerator nor denominator


# ------------------------------------------------------------------------------------------ contrastive
def test_global_contrastive_orthogonal_closed_form():
    image = T([E1, E2]) * 3.0  # normalised inside
    text = T([E1, E2])
    # each row: -1/tau + log(e^(1/tau) + e^0); two directions summed
    expected = 2 * math.log(1 + math.exp(-1 / 0.2))
    assert close(global_contrastive_loss(image, text, tau=0.2), expected)
    swapped = 2 * (1 / 0.2 + math.log(1 + math.exp(-1 / 0.2)))
    assert close(global_contrastive_loss(image, text.flip(0), tau=0.2), swapped, 1e-4)


def test_sentence_region_contrastive_cross_sample_negatives():
    sentences = T([[E1, E2], [E1, [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    regions = T([[E1, E2], [E2, [5.0, 5.0]], [E1, E1]])
    mask = T([[True, True], [True, False], [False, False]])
    # candidates: e1, e2, e1 (identical sentences of two reports are both kept); scores cos / 0.25
    l00 = math.log(2 * math.e**4 + 1) - 4
    l01 = math.log(math.e**4 + 2) - 4
    l10 = math.log(math.e**4 + 2) - 0  # its own sentence is e1, orthogonal to the region
    expected = ((l00 + l01) / 2 + l10) / 2  # the sample without sentences is left out
    assert close(sentence_region_contrastive_loss(sentences, regions, mask, tau=0.25), expected, 1e-4)


def test_masked_mse_weights_per_sample_and_counts_empty_samples():
    target = torch.zeros(3, 2, 2)
    pred = T([[[1.0, 1.0], [2.0, 0.0]],  # squared L2 2 and 4 -> mean 3
              [[1.0, 0.0], [9.0, 9.0]],  # only slot 0 valid -> 1
              [[7.0, 7.0], [7.0, 7.0]]])  # no valid slot -> 0, still counted
    mask = T([[True, True], [True, False], [False, False]])
    assert close(masked_mse_loss(target, pred, mask), (3 + 1 + 0) / 3)


# ------------------------------------------------------------------------------------------ classification
def test_anatomy_classification_hand_case():
    tau = 0.25
    features = T([[E1, E2, E1]])  # (N=1, A=3, d=2)
    pos = T([E1, E2])  # p_0, p_1
    neg = T([[-1.0, 0.0], [0.0, -1.0]])  # q_0, q_1
    labels = T([[[1, 0], [0, 0], [1, 1]]])
    valid = T([[[True, True], [True, False], [False, False]]])
    # region 0 (f = e1): scores p = [4, 0], q = [-4, 0]; P = {p_0, q_1}, D = all four
    l0 = -(4 + 0) / 2 + math.log(math.e**4 + math.e**-4 + 2)
    # region 1 (f = e2): only class 0 valid, y = 0: P = {q_0 (0)}, D = {p_0 (0), q_0 (0)}
    l1 = -0.0 + math.log(2)
    # region 2: no valid label -> not counted
    out = anatomy_classification_loss(features, pos, neg, labels, valid, tau=tau)
    assert close(out, (l0 + l1) / 2, 1e-4)


def test_anatomy_classification_without_labels_is_a_connected_zero():
    features = torch.randn(2, 3, 4, requires_grad=True)
    out = anatomy_classification_loss(features, torch.randn(2, 4), torch.randn(2, 4),
                                      torch.zeros(2, 3, 2), torch.zeros(2, 3, 2, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert features.grad is not None and float(features.grad.abs().sum()) == 0.0


def test_negative_class_subset():
    labels = torch.zeros(2, 3, 12)
    labels[0, 1, 3] = labels[1, 2, 7] = 1
    valid = torch.ones(2, 3, 12, dtype=torch.bool)
    k = negative_class_subset(labels, valid, 10, torch.Generator().manual_seed(0))
    assert int(k.sum()) == 10 and k[3] and k[7]  # positive classes outweigh 1e-7 by far
    valid[:, :, 11] = False
    for seed in range(5):
        k = negative_class_subset(labels, valid, 10, torch.Generator().manual_seed(seed))
        assert not k[11] and k[3] and k[7]
    small = negative_class_subset(labels[..., :4], valid[..., :4].clone().fill_(False).index_fill_(2, T([1]), True))
    assert small.tolist() == [False, True, False, False]  # C <= 10: every class with a valid label


def test_pathology_classification_cross_entropy():
    features = T([[E1, E2], [E1, E2]])  # (N=2, C=2, d)
    pos = T([E1, E2])
    neg = T([[-1.0, 0.0], [0.0, -1.0]])
    labels = T([[1, 0], [1, 1]])
    mask = T([[True, True], [False, False]])
    # class 0, y = 1: logits [p0, p1, q0, q1] = [5, 0, -5, 0], target p0
    ce0 = -5 + math.log(math.e**5 + 2 + math.e**-5)
    # class 1, y = 0: logits [0, 5, 0, -5], target q1 (index C + 1)
    ce1 = 5 + math.log(math.e**5 + 2 + math.e**-5)
    out = pathology_classification_loss(features, pos, neg, labels, mask, tau=0.2)
    assert close(out, (ce0 + ce1) / 2, 1e-4)  # the second sample has no flagged class


# ------------------------------------------------------------------------------------------ subsampling
def test_expected_count_subsample_probability_and_determinism():
    cand = torch.ones(10, dtype=torch.bool)
    cand[[2, 5]] = False
    keep = expected_count_subsample(cand, 4, torch.Generator().manual_seed(7))
    draw = torch.rand(10, generator=torch.Generator().manual_seed(7))
    assert keep.tolist() == (cand & (draw < 0.5)).tolist()  # p = 4 / 8
    counts = torch.stack([expected_count_subsample(cand, 4, torch.Generator().manual_seed(s)) for s in range(400)])
    assert not counts[:, [2, 5]].any()
    assert abs(float(counts.sum(dim=1).float().mean()) - 4.0) < 0.3
    assert expected_count_subsample(cand, 20).tolist() == cand.tolist()  # p = 1
    assert not expected_count_subsample(torch.zeros(5, dtype=torch.bool), 3).any()


def test_expected_count_subsample_falls_back_to_first_k():
    cand = T([False, True, False, True, True, False, True])
    p = 2 / 4
    for seed in range(100):
        draw = torch.rand(7, generator=torch.Generator().manual_seed(seed))
        if not (cand & (draw < p)).any():
            break
    else:
        pytest.skip("no seed without a kept candidate")
    keep = expected_count_subsample(cand, 2, torch.Generator().manual_seed(seed))
    assert keep.tolist() == [False, True, False, True, False, False, False]


# ------------------------------------------------------------------------------------------ generation
def test_generation_loss_with_and_without_padding():
    # B=1, L=3, V=2: position 0 predicts id 1 (real), position 1 predicts padding id 0
    logits = T([[[0.0, 0.0], [2.0, 0.0], [9.0, 9.0]]])
    ids = T([[0, 1, 0]])
    mask = T([[True, True, False]])
    real = math.log(2)
    pad = math.log(1 + math.exp(-2))
    assert close(generation_loss(logits, ids, mask), real)
    assert close(generation_loss(logits, ids, mask, include_padding=True), (real + pad) / 2)


def test_generation_loss_averages_real_tokens_over_rows():
    logits = torch.zeros(2, 3, 4)
    logits[1, :, 2] = math.log(3.0)  # p(id 2) = 3 / 6
    ids = T([[0, 1, 2], [0, 2, 3]])
    mask = T([[True, True, False], [True, True, True]])
    # scored: row 0 pos 0 (uniform: log 4); row 1 pos 0 (id 2: log 2), pos 1 (id 3: log 6)
    assert close(generation_loss(logits, ids, mask), (math.log(4) + math.log(2) + math.log(6)) / 3)


# ------------------------------------------------------------------------------------------ gradients
def test_gradients_flow_to_predictions():
    torch.manual_seed(0)
    boxes = torch.rand(2, 3, 3, 4) * 0.5 + 0.25
    boxes = boxes.requires_grad_()
    weights = torch.rand(2, 3, 3, requires_grad=True)
    prob = torch.rand(2, 3, 3, requires_grad=True)
    target = torch.rand(2, 3, 2, 4) * 0.5 + 0.25
    tmask = T([[[True, True], [True, False], [False, False]], [[True, False], [False, False], [True, True]]])
    feats = torch.randn(2, 3, 8, requires_grad=True)
    texts = torch.randn(2, 3, 8)
    smask = T([[True, True, False], [True, False, False]])
    logits = torch.randn(2, 4, 5, requires_grad=True)
    terms = [
        pathology_detection_loss(boxes, weights, prob, target, tmask, torch.ones(2, 3, dtype=torch.bool))["total"],
        multi_box_loss(boxes, weights, target, tmask)[0],
        single_box_loss(boxes, target[:, :, 0], tmask[..., 0])[0],
        global_contrastive_loss(feats[:, 0], texts[:, 0]),
        sentence_region_contrastive_loss(texts, feats, smask),
        masked_mse_loss(texts, feats, smask),
        anatomy_classification_loss(feats, torch.randn(4, 8), torch.randn(4, 8), torch.randint(0, 2, (2, 3, 4)),
                                    torch.ones(2, 3, 4, dtype=torch.bool)),
        pathology_classification_loss(feats, torch.randn(3, 8), torch.randn(3, 8), torch.randint(0, 2, (2, 3)),
                                      torch.ones(2, 3, dtype=torch.bool)),
        generation_loss(logits, torch.randint(0, 5, (2, 4)), torch.ones(2, 4, dtype=torch.bool)),
    ]
    sum(terms).backward()
    for t in (boxes, weights, feats, logits):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_anatomy_classification_subsamples_negative_classes():
    # C = 4 > n_negatives = 3. Classes 0 and 1 have positives (weight 1 + 1e-7), class 2 is
    # valid but never positive (weight 1e-7), class 3 has a raw positive only where invalid.
    tau, r2 = 0.25, math.sqrt(2)
    features = T([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]])  # (N=1, A=2, d=4); f_1 = (e1 + e2) / sqrt 2
    pos = torch.eye(4)  # p_c = e_c
    neg = -torch.eye(4)  # q_c = -e_c
    labels = T([[[1, 0, 0, 1], [0, 1, 0, 0]]])
    valid = T([[[True, True, True, False], [True, True, True, False]]])
    for seed in range(3):
        k = negative_class_subset(labels, valid, 3, torch.Generator().manual_seed(seed))
        assert k.tolist() == [True, True, False, False]  # 3 drawn {0, 1, 3}, then 3 dropped (no valid label)
    # K = {0, 1}: class 2 (valid, negative, outside K) is neither a positive nor a candidate
    # region 0 (f = e0): P = {p_0: 4, q_1: 0}; D = {p_0: 4, q_0: -4, p_1: 0, q_1: 0}
    l0 = -(4 + 0) / 2 + math.log(math.e**4 + math.e**-4 + 2)
    # region 1: P = {p_1: 4/sqrt2, q_0: 0}; D = {p_0: 0, q_0: 0, p_1: 4/sqrt2, q_1: -4/sqrt2}
    s = 4 / r2
    l1 = -(s + 0) / 2 + math.log(math.exp(s) + math.exp(-s) + 2)
    out = anatomy_classification_loss(features, pos, neg, labels, valid, tau=tau, n_negatives=3,
                                      generator=torch.Generator().manual_seed(0))
    assert close(out, (l0 + l1) / 2, 1e-4)
    # C <= n_negatives: K = every valid class {0, 1, 2}, so class 2 joins P (as q_2) and D
    l0_all = -(4 + 0 + 0) / 3 + math.log(math.e**4 + math.e**-4 + 4)
    l1_all = -(s + 0 - s) / 3 + math.log(math.exp(s) + math.exp(-s) + 2 + math.exp(s) + math.exp(-s))
    out_all = anatomy_classification_loss(features, pos, neg, labels, valid, tau=tau, n_negatives=10)
    assert close(out_all, (l0_all + l1_all) / 2, 1e-4)


def test_pathology_detection_one_sample_one_class_one_target_reference_matching():
    # default (reference) matching: which of the 3 boxes wins the first copy is a solver tie,
    # but all 3 regress to the target and exactly one weight target is 1
    pred = T([[[SMALL, SMALL, SMALL]]]).requires_grad_()  # (N=1, C=1, R=3, 4)
    weights = T([[[0.9, 0.5, 0.2]]]).requires_grad_()
    cls_prob = torch.full((1, 1, 3), 0.5)
    target = T([[[BIG, [0.0, 0.0, 0.0, 0.0]]]])  # second slot is padding
    target_mask = T([[[True, False]]])
    out = pathology_detection_loss(pred, weights, cls_prob, target, target_mask, T([[True]]))
    assert close(out["box_loss"].detach(), NESTED_PAIR_LOSS)  # (3.5 + 3.5 + 3.5) / 3 assigned pairs
    a = (3 - 1 + 1) / (3 + 2)  # n_neg = 2, n_all = 3 -> alpha = 3/5

    def fl(p, y):
        return (a if y else 1 - a) * (1 - (p if y else 1 - p)) ** 2 * -math.log(p if y else 1 - p)

    w = [0.9, 0.5, 0.2]
    options = [sum(fl(w[r], r == winner) for r in range(3)) / 3 for winner in range(3)]
    assert len({round(o, 6) for o in options}) == 3  # the three outcomes are distinguishable
    assert any(close(out["weights_loss"].detach(), o) for o in options)
    assert close(out["total"].detach(), out["box_loss"].detach() + 3 * out["weights_loss"].detach())
    out["total"].backward()
    for t in (pred, weights):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
