"""The judges' statistics against values worked out by hand or by textbook formulas."""

from __future__ import annotations

import math
import random

import pytest

from training.judges.statistics import (
    one_sided_alpha,
    paired_bootstrap,
    percent_range,
    sign_test,
    two_proportions,
    wilson_interval,
)


def test_sign_test_is_the_binomial_tail():
    assert sign_test(5, 0) == 1 / 32
    assert sign_test(3, 3) == (20 + 15 + 6 + 1) / 64
    assert sign_test(0, 4) == 1.0
    assert sign_test(0, 0) == 1.0  # nothing to compare: no evidence at all
    # 15 of 20 discordant prompts: p ≈ 0.0207, below 0.025 (better at 95 %); 14 of 20 is not.
    assert sign_test(15, 5) < one_sided_alpha(0.95) < sign_test(14, 6)


def test_wilson_interval_matches_the_textbook_values():
    low, high = wilson_interval(50, 100, 0.95)
    assert (round(low, 3), round(high, 3)) == (0.404, 0.596)
    low, high = wilson_interval(0, 10, 0.95)
    assert low == pytest.approx(0.0, abs=1e-12) and round(high, 3) == 0.278
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)


def test_two_proportions_z_and_p():
    test = two_proportions(60, 100, 40, 100, 0.95)
    # Pooled rate 0.5: z = 0.2 / sqrt(0.25 · 0.02) = 2.828.
    assert test.z == pytest.approx(0.2 / math.sqrt(0.25 * 0.02))
    assert test.p_better == pytest.approx(0.002339, abs=1e-5)
    assert test.p_better + test.p_worse == pytest.approx(1.0)
    # The unpooled 95 % interval of the difference: 0.2 ± 1.96 · sqrt(0.24/100 · 2).
    half = 1.959964 * math.sqrt(2 * 0.24 / 100)
    assert (test.low, test.high) == (pytest.approx(0.2 - half, abs=1e-5), pytest.approx(0.2 + half, abs=1e-5))
    same = two_proportions(10, 10, 20, 20, 0.95)  # everybody up on both sides
    assert same.z == 0.0 and same.p_better == 0.5
    with pytest.raises(ValueError):
        two_proportions(1, 0, 1, 1, 0.95)


def test_paired_bootstrap_agrees_with_the_normal_interval_and_is_reproducible():
    rng = random.Random(7)
    differences = [0.3 + rng.gauss(0, 1) for _ in range(400)]
    result = paired_bootstrap(differences, 0.95)
    mean = sum(differences) / len(differences)
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (len(differences) - 1))
    half = 1.96 * sd / math.sqrt(len(differences))
    assert result.mean == pytest.approx(mean)
    assert result.low == pytest.approx(mean - half, abs=0.02) and result.high == pytest.approx(mean + half, abs=0.02)
    assert result.better() and result.p_value < 0.025
    assert paired_bootstrap(differences, 0.95) == result  # seeded: the same verdict every time


def test_paired_bootstrap_does_not_call_noise_or_nothing_better():
    assert not paired_bootstrap([0.0] * 50, 0.95).better()  # identical models
    noise = [random.Random(1).gauss(0, 1) for _ in range(10)]
    assert not paired_bootstrap([d - sum(noise) / 10 for d in noise], 0.95).better()  # mean exactly 0
    assert not paired_bootstrap([], 0.95).better()
    assert paired_bootstrap([0.1] * 5, 0.95).low == pytest.approx(0.1)  # no spread: certain


def test_confidence_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], 1.0)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, 0.3)


def test_percent_range_rounds_to_whole_percents():
    assert percent_range(0.5449, 0.6751) == "54–68 %"
