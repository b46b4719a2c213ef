"""Automatic λ_D / λ_U stored with each snapshot, exactly as SPEC §1 (the paper's Eq. 7)."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from feedback.models import DatasetSnapshot
from feedback.services import SnapshotRefused, create_snapshot
from feedback_helpers import add_labelled_examples

pytestmark = pytest.mark.django_db


def snapshot(**kwargs) -> DatasetSnapshot:
    return create_snapshot(holdout=0.0, **kwargs)


def test_data_already_in_the_band_keeps_unit_weights():
    add_labelled_examples(4, 3)
    result = snapshot()
    assert (result.n_desirable, result.n_undesirable) == (4, 3)
    assert (result.desirable_weight, result.undesirable_weight) == (1.0, 1.0)
    assert "already in" in result.weight_rule


def test_one_to_ten_scales_the_desirable_side():
    add_labelled_examples(1, 10)
    result = snapshot()
    assert result.desirable_weight == pytest.approx(13.333, abs=1e-3)
    assert result.undesirable_weight == 1.0
    assert result.params["effective_ratio"] == pytest.approx(4 / 3)


def test_ten_to_one_scales_the_undesirable_side():
    add_labelled_examples(10, 1)
    result = snapshot()
    assert result.desirable_weight == 1.0
    assert result.undesirable_weight == pytest.approx(7.5)


def test_a_single_class_dataset_is_refused_clearly():
    add_labelled_examples(5, 0)
    with pytest.raises(SnapshotRefused, match="single-class"):
        snapshot()
    with pytest.raises(CommandError, match="single-class"):
        call_command("snapshot_dataset", "--holdout", "0")
    assert not DatasetSnapshot.objects.exists()


def test_a_custom_target_ratio():
    add_labelled_examples(1, 10)
    result = snapshot(target_ratio=1.0)
    assert (result.desirable_weight, result.undesirable_weight) == (pytest.approx(10.0), 1.0)
    assert result.params["target_ratio"] == 1.0


def test_downside_first_keeps_the_undesirable_side_heavier():
    add_labelled_examples(10, 1)
    result = snapshot(mode="downside_first")
    assert result.desirable_weight == 1.0
    assert result.undesirable_weight == pytest.approx(40 / 3)
    effective = result.desirable_weight * result.n_desirable / (result.undesirable_weight * result.n_undesirable)
    assert effective == pytest.approx(0.75) and result.params["mode"] == "downside_first"


def test_a_manual_override_is_stored_as_such():
    add_labelled_examples(1, 10)
    result = snapshot(manual_weights=(2.0, 0.5))
    assert (result.desirable_weight, result.undesirable_weight) == (2.0, 0.5)
    assert result.weight_rule == "manual override" and result.params["manual_weights"] == [2.0, 0.5]


def test_weights_balance_the_train_split_only():
    add_labelled_examples(30, 30)
    result = create_snapshot(holdout=0.5, seed=3)
    assert result.n_desirable + result.n_undesirable == result.n_train
    assert result.params["holdout_n_desirable"] + result.params["holdout_n_undesirable"] == result.n_holdout
    assert result.n_train + result.n_holdout == 60
