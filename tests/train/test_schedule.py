"""Cosine schedule with linear warm-up from 0, cosine at the absolute step (docs/training.md#learning-rate-schedule)."""

import math

from chexcli.train.schedule import CosineWarmupSchedule, lr_at

BASE, MIN, WARMUP, TOTAL = 1e-3, 1e-5, 10, 100


def test_lr_at_key_points():
    assert lr_at(0, BASE, MIN, WARMUP, TOTAL) == 0.0
    assert math.isclose(lr_at(WARMUP - 1, BASE, MIN, WARMUP, TOTAL), BASE * 9 / 10)
    # at t = warmup the cosine is evaluated at 10/100, not 0: slightly below the base rate
    at_warmup = MIN + 0.5 * (BASE - MIN) * (1 + math.cos(math.pi * 0.1))
    assert math.isclose(lr_at(WARMUP, BASE, MIN, WARMUP, TOTAL), at_warmup)
    assert at_warmup < BASE
    assert math.isclose(lr_at(50, BASE, MIN, WARMUP, TOTAL), MIN + 0.5 * (BASE - MIN))
    assert lr_at(TOTAL, BASE, MIN, WARMUP, TOTAL) == MIN
    assert lr_at(TOTAL + 5, BASE, MIN, WARMUP, TOTAL) == MIN
    assert lr_at(TOTAL + 7, BASE, MIN, WARMUP, TOTAL) == MIN


def test_no_warmup_and_class_wrapper():
    assert math.isclose(lr_at(0, BASE, MIN, 0, TOTAL), BASE)
    sched = CosineWarmupSchedule(BASE, MIN, WARMUP, TOTAL)
    assert [sched.lr(t) for t in (0, 5, 60, 200)] == [lr_at(t, BASE, MIN, WARMUP, TOTAL) for t in (0, 5, 60, 200)]


def test_lag_runs_one_update_behind_like_the_reference():
    sched = CosineWarmupSchedule(BASE, MIN, WARMUP, TOTAL, lag=1)
    assert sched.lr(0) == sched.lr(1) == 0.0  # the reference's first two updates run at lr 0
    assert [sched.lr(t) for t in range(2, 40)] == [lr_at(t - 1, BASE, MIN, WARMUP, TOTAL) for t in range(2, 40)]
    recipe = {"lr": BASE, "min_lr": MIN, "warmup_steps": WARMUP, "schedule_lag": 1}
    assert CosineWarmupSchedule.from_recipe(recipe, TOTAL) == sched
    assert CosineWarmupSchedule.from_recipe({**recipe, "schedule_lag": 0}, TOTAL).lr(1) == lr_at(1, BASE, MIN, WARMUP,
                                                                                                 TOTAL)
