"""The automatic λ_D / λ_U rule (SPEC §1, paper Eq. 7)."""

import pytest

from training.kto.balancing import balance_weights


def test_ratio_inside_the_accepted_interval_keeps_unit_weights():
    weights = balance_weights(120, 100)
    assert (weights.desirable_weight, weights.undesirable_weight) == (1.0, 1.0)
    assert "kept" in weights.rule


def test_one_to_ten_gives_the_papers_13_33():
    weights = balance_weights(100, 1000)
    assert weights.undesirable_weight == 1.0
    assert weights.desirable_weight == pytest.approx(13.333, abs=1e-3)
    assert weights.effective_ratio == pytest.approx(4 / 3)


def test_desirable_majority_scales_undesirable():
    weights = balance_weights(1000, 100)
    assert weights.desirable_weight == 1.0
    assert weights.effective_ratio == pytest.approx(4 / 3)


def test_target_is_configurable_and_downside_first_mirrors():
    assert balance_weights(100, 1000, target_ratio=1.0).desirable_weight == pytest.approx(10.0)
    downside = balance_weights(100, 1000, mode="downside_first")
    assert downside.effective_ratio == pytest.approx(3 / 4)
    assert downside.desirable_weight * 100 < downside.undesirable_weight * 1000
    kept = balance_weights(80, 100, mode="downside_first")
    assert (kept.desirable_weight, kept.undesirable_weight) == (1.0, 1.0)


def test_manual_override_and_errors():
    manual = balance_weights(10, 10, manual=(2.0, 0.5))
    assert (manual.desirable_weight, manual.undesirable_weight, manual.mode) == (2.0, 0.5, "manual")
    with pytest.raises(ValueError, match="single-class"):
        balance_weights(0, 50)
    with pytest.raises(ValueError):
        balance_weights(10, 10, mode="sideways")
