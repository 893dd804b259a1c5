"""Balanced Hungarian matching (docs/training.md#matching) with R_s = 3 predictions."""

import numpy as np
import torch

from chexcli.train.matcher import balanced_match, batched_balanced_match


def test_no_target_no_match():
    matched, assigned = balanced_match(np.zeros((3, 0)))
    assert matched.tolist() == [False, False, False]
    assert assigned.tolist() == [-1, -1, -1]


def test_one_target_all_assigned_one_matched():
    cost = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    matched, assigned = balanced_match(cost)
    assert assigned.tolist() == [0, 0, 0]
    assert matched.sum() == 1  # which one is the solver's tie-break
    matched, assigned = balanced_match(cost, cheapest_matched=True)
    assert matched.tolist() == [True, False, False]
    assert assigned.tolist() == [0, 0, 0]


def test_two_targets_two_matches_third_box_reuses_the_cheaper_target():
    # rows 0 and 1 take their own target; row 2 is cheaper on target 0 (1 < 8)
    cost = np.array([[0.0, 9.0], [9.0, 0.0], [1.0, 8.0]], dtype=np.float32)
    matched, assigned = balanced_match(cost)
    assert assigned.tolist() == [0, 1, 0]
    assert matched[1] and matched.sum() == 2 and matched[0] != matched[2]
    matched, _ = balanced_match(cost, cheapest_matched=True)
    assert matched.tolist() == [True, True, False]


def test_three_targets_plain_hungarian():
    cost = np.array([[5.0, 1.0, 9.0], [1.0, 5.0, 9.0], [9.0, 9.0, 1.0]])
    matched, assigned = balanced_match(cost)
    assert assigned.tolist() == [1, 0, 2]
    assert matched.all()


def test_four_targets_extra_target_unmatched():
    cost = np.array([[1.0, 9.0, 9.0, 9.0], [9.0, 9.0, 1.0, 9.0], [9.0, 1.0, 9.0, 9.0]])
    matched, assigned = balanced_match(cost)
    assert assigned.tolist() == [0, 2, 1]
    assert matched.all()


def test_more_than_two_copies():
    # 5 predictions, 2 targets -> 3 copies; every prediction assigned, one match per target
    cost = np.array([[0.0, 5.0], [5.0, 0.0], [1.0, 5.0], [2.0, 5.0], [5.0, 1.0]])
    matched, assigned = balanced_match(cost, cheapest_matched=True)
    assert assigned.tolist() == [0, 1, 0, 0, 1]
    assert matched.tolist() == [True, True, False, False, False]


def test_batched_restricts_to_valid_targets_and_maps_columns_back():
    cost = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 3.0]],
                         [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])
    valid = torch.tensor([[False, True, True], [False, False, False]])
    # row 0: targets 1 and 2 valid (column 0, the cheapest, is padding)
    cost[0, :, 1] = torch.tensor([5.0, 0.0, 5.0])
    matched, assign = batched_balanced_match(cost, valid, cheapest_matched=True)
    assert matched.dtype == torch.bool and assign.dtype == torch.bool
    assert assign.shape == (2, 3, 3)
    assert not assign[:, :, 0].any()
    assert assign[0].sum(dim=1).tolist() == [1, 1, 1]  # every prediction assigned once
    assert assign[0, 1, 1] and assign[0, 0, 2]  # row 1 -> target 1, row 0 -> target 2 (cost 1)
    assert assign[0, 2, 2]  # the third box reuses target 2
    assert matched[0].tolist() == [True, True, False]
    assert not matched[1].any() and not assign[1].any()


def test_batched_survives_non_finite_costs():
    cost = torch.tensor([[[float("nan"), 1.0], [float("inf"), 2.0], [0.5, 3.0]]])
    matched, assign = batched_balanced_match(cost, torch.tensor([[True, True]]))
    assert assign.sum() == 3 and matched.sum() == 2
