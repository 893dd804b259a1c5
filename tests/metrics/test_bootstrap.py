"""Bootstrap semantics (seed, draws, summary) on a case with a known distribution."""

import numpy as np
import pytest
import torch

from chexcli.metrics.bootstrap import BOOTSTRAP_SEED, CombinedMetric, bootstrap, draw_indices


class MeanMetric:
    """Mean of per-unit values."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)
        self.n_units = len(self.values)

    def compute(self, idx=None):
        v = self.values if idx is None else self.values[idx]
        return {"mean": float(v.mean())}


def test_draws_match_torch_generator():
    gen = torch.Generator().manual_seed(2147483647)
    first = torch.randint(7, (7,), generator=gen).numpy()
    second = torch.randint(7, (7,), generator=gen).numpy()
    idx = draw_indices(7, 2)
    assert BOOTSTRAP_SEED == 2147483647
    np.testing.assert_array_equal(idx[0], first)
    np.testing.assert_array_equal(idx[1], second)
    np.testing.assert_array_equal(draw_indices(7, 2), idx)  # fresh generator per call


def test_bernoulli_mean_distribution():
    p, n = 0.3, 400
    values = np.zeros(n)
    values[: int(p * n)] = 1.0
    res = bootstrap(MeanMetric(values), 1000)
    s = res.summary()
    assert s["mean/point"] == pytest.approx(p)
    assert s["mean/mean"] == pytest.approx(p, abs=0.005)
    expected_std = np.sqrt(p * (1 - p) / n)  # binomial standard error
    assert s["mean/std"] == pytest.approx(expected_std, rel=0.1)
    assert s["mean/ci_low"] == pytest.approx(p - 1.96 * expected_std, abs=0.01)
    assert s["mean/ci_high"] == pytest.approx(p + 1.96 * expected_std, abs=0.01)
    vals = res.replicates["mean"]
    assert s["mean/std"] == pytest.approx(np.sqrt(np.mean((vals - vals.mean()) ** 2)))  # ddof 0
    assert len(res.rows()) == 1000 and set(res.rows()[0]) == {"mean"}


def test_no_replicates_gives_point_only():
    res = bootstrap(MeanMetric([1.0, 3.0]), 0)
    assert res.summary() == {"mean/point": 2.0}


def test_combined_metric():
    a, b = MeanMetric([1.0, 2.0]), MeanMetric([5.0, 7.0])
    b.compute = lambda idx=None, m=b: {"other": MeanMetric.compute(m, idx)["mean"]}
    out = CombinedMetric(a, b).compute(np.array([1, 1]))
    assert out == {"mean": 2.0, "other": 7.0}
