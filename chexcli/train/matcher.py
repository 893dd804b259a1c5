"""Balanced Hungarian matching of R predicted boxes to a query's targets (docs/training.md#matching).

With fewer targets than predictions, the target columns are replicated and
each copy j is made more expensive by j * (cost range + 1), so every
prediction is assigned, the first copy of each target is taken first, and a
prediction is *matched* only when it won a first copy.

Which of the predictions sharing a target wins its first copy is a tie: moving
them between the copies of one target never changes the total cost, so SciPy's
choice is decided by its internal order and float rounding, not by the cost
(the reference behaviour, kept by default). `cheapest_matched=True` gives the
first copy to the cheapest of them instead, which is another optimal solution
of the same problem.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def balanced_match(cost: np.ndarray, cheapest_matched: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """cost (R_s, R_t) over the valid targets -> matched (R_s,) bool, assigned target (R_s,) int (-1: none).

    R_t == 0: nothing matched or assigned. R_s <= R_t: plain Hungarian assignment. R_s > R_t:
    every prediction is assigned, exactly R_t are matched (one per target).
    """
    r_s, r_t = cost.shape
    matched = np.zeros(r_s, dtype=bool)
    assigned = np.full(r_s, -1, dtype=np.int64)
    if r_t == 0 or r_s == 0:
        return matched, assigned
    if r_s <= r_t:
        rows, cols = linear_sum_assignment(cost)
        matched[rows] = True
        assigned[rows] = cols
        return matched, assigned
    copies = math.ceil(r_s / r_t)
    step = float(cost.max() - cost.min()) + 1.0
    wide = np.concatenate([cost + j * step for j in range(copies)], axis=1)  # (R_s, copies * R_t)
    rows, cols = linear_sum_assignment(wide)
    matched[rows] = cols < r_t
    assigned[rows] = cols % r_t
    if cheapest_matched:
        for t in range(r_t):
            sharing = np.flatnonzero(assigned == t)
            matched[sharing] = False
            matched[sharing[np.argmin(cost[sharing, t])]] = True
    return matched, assigned


def _finite(cost: np.ndarray) -> np.ndarray:
    """Replace NaN/inf (diverged predictions) by the largest finite cost, so SciPy can solve.

    The reference lets SciPy raise here; the loss of such a step is NaN anyway and is only logged.
    """
    ok = np.isfinite(cost)
    if ok.all():
        return cost
    fill = cost[ok].max() if ok.any() else 0.0
    return np.where(ok, cost, fill).astype(cost.dtype)


@torch.no_grad()
def batched_balanced_match(cost: Tensor, valid: Tensor, cheapest_matched: bool = False) -> tuple[Tensor, Tensor]:
    """cost (B, R_s, T), valid targets (B, T) -> matched (B, R_s) bool, assign (B, R_s, T) bool.

    Solved per row on the CPU (no gradients); `assign[b, r, t]` is True when
    prediction r is assigned to target t. Rows without a valid target stay all False.
    """
    b, r_s, t = cost.shape
    cost_np = _finite(cost.detach().float().cpu().numpy())
    valid_np = valid.detach().bool().cpu().numpy()
    matched = np.zeros((b, r_s), dtype=bool)
    assign = np.zeros((b, r_s, t), dtype=bool)
    for i in range(b):
        cols = np.flatnonzero(valid_np[i])
        if cols.size == 0:
            continue
        m, a = balanced_match(cost_np[i][:, cols], cheapest_matched)
        matched[i] = m
        ok = a >= 0
        assign[i, np.flatnonzero(ok), cols[a[ok]]] = True
    device = cost.device
    return torch.from_numpy(matched).to(device), torch.from_numpy(assign).to(device)
