"""Dataset snapshots: majority labels, ties dropped, split by prompt, an immutable hashed file.

Automatic λ_D / λ_U stored with each snapshot, exactly as SPEC §1 (the paper's Eq. 7).
"""

from __future__ import annotations

import hashlib
import json
import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from feedback.models import DatasetSnapshot, Vote
from feedback.services import SnapshotRefused, create_snapshot
from tests.feedback.helpers import add_generation, add_labelled_examples

# --- snapshots ----------------------------------------


def rows(snapshot: DatasetSnapshot) -> list[dict]:
    return [json.loads(line) for line in Path(snapshot.path).read_text().splitlines()]


def vote(generation, *labels):
    for index, label in enumerate(labels):
        Vote.objects.create(generation=generation, external_user_id=f"rater-{index}", desirable=label)


@pytest.mark.django_db
def test_the_majority_label_wins_and_ties_are_dropped_and_counted():
    majority_good = add_generation(prompt="p1", completion="good")
    majority_bad = add_generation(prompt="p1", completion="bad")
    tied = add_generation(prompt="p2", completion="tied")
    vote(majority_good, True, True, False)
    vote(majority_bad, False, False, True)
    vote(tied, True, False)
    snapshot = create_snapshot(holdout=0.0)
    assert [(row["completion"], row["label"]) for row in rows(snapshot)] == [("good", True), ("bad", False)]
    assert (snapshot.n_ties_dropped, snapshot.n_votes, snapshot.n_train) == (1, 8, 2)


@pytest.mark.django_db
def test_one_example_per_prompt_and_completion():
    generation = add_generation(prompt="p", completion="c")
    vote(generation, True, True, True)
    add_labelled_examples(0, 1)
    assert [row["completion"] for row in rows(create_snapshot(holdout=0.0))].count("c") == 1


@pytest.mark.django_db
def test_the_split_is_by_prompt_and_no_prompt_is_in_both():
    for prompt_index in range(40):
        for completion_index, label in enumerate((True, False, True)):
            vote(add_generation(prompt=f"prompt {prompt_index}", completion=f"c{completion_index}"), label)
    snapshot = create_snapshot(holdout=0.3, seed=7)
    split_of_prompt: dict[str, set] = {}
    for row in rows(snapshot):
        split_of_prompt.setdefault(row["prompt"], set()).add(row["split"])
    assert all(len(splits) == 1 for splits in split_of_prompt.values())
    held_out = [prompt for prompt, splits in split_of_prompt.items() if splits == {"holdout"}]
    assert 0 < len(held_out) < 40
    assert snapshot.n_holdout == 3 * len(held_out) and snapshot.params["n_prompts_holdout"] == len(held_out)
    # A prompt's split depends only on the prompt and the seed: a later snapshot keeps it.
    vote(add_generation(prompt="a new prompt", completion="x"), False)
    later = create_snapshot(holdout=0.3, seed=7)
    later_split = {row["prompt"]: row["split"] for row in rows(later)}
    assert all(later_split[prompt] == "holdout" for prompt in held_out)


@pytest.mark.django_db
def test_the_file_hash_is_stored_and_the_file_is_read_only():
    add_labelled_examples(3, 2)
    snapshot = create_snapshot(holdout=0.0)
    data = Path(snapshot.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == snapshot.sha256
    assert not os.stat(snapshot.path).st_mode & 0o222
    assert not [name for name in os.listdir(Path(snapshot.path).parent) if name.endswith(".tmp")]


@pytest.mark.django_db
def test_votes_after_a_snapshot_do_not_change_it():
    add_labelled_examples(3, 2)
    first = create_snapshot(holdout=0.0)
    vote(add_generation(prompt="late", completion="x"), True)
    first.refresh_from_db()
    assert first.n_train == 5 and first.last_vote_id < Vote.objects.latest("id").id
    second = create_snapshot(holdout=0.0)
    assert second.n_train == 6 and second.path != first.path and Path(first.path).exists()


@pytest.mark.django_db
def test_the_same_votes_give_the_same_bytes():
    add_labelled_examples(3, 2)
    assert create_snapshot(holdout=0.2).sha256 == create_snapshot(holdout=0.2).sha256


@pytest.mark.django_db
def test_the_command_prints_one_json_line():
    add_labelled_examples(1, 10)
    out = StringIO()
    call_command("snapshot_dataset", "--holdout", "0", "--target-ratio", "1.333", stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["id"] == DatasetSnapshot.objects.get().pk
    assert (summary["n_desirable"], summary["n_undesirable"]) == (1, 10)
    assert summary["desirable_weight"] == pytest.approx(13.33) and summary["undesirable_weight"] == 1.0
    assert len(summary["sha256"]) == 64


@pytest.mark.django_db
def test_no_votes_is_a_clear_refusal():
    with pytest.raises(CommandError, match="no votes yet"):
        call_command("snapshot_dataset")


# --- balancing ----------------------------------------


def snapshot(**kwargs) -> DatasetSnapshot:
    return create_snapshot(holdout=0.0, **kwargs)


@pytest.mark.django_db
def test_data_already_in_the_band_keeps_unit_weights():
    add_labelled_examples(4, 3)
    result = snapshot()
    assert (result.n_desirable, result.n_undesirable) == (4, 3)
    assert (result.desirable_weight, result.undesirable_weight) == (1.0, 1.0)
    assert "already in" in result.weight_rule


@pytest.mark.django_db
def test_one_to_ten_scales_the_desirable_side():
    add_labelled_examples(1, 10)
    result = snapshot()
    assert result.desirable_weight == pytest.approx(13.333, abs=1e-3)
    assert result.undesirable_weight == 1.0
    assert result.params["effective_ratio"] == pytest.approx(4 / 3)


@pytest.mark.django_db
def test_ten_to_one_scales_the_undesirable_side():
    add_labelled_examples(10, 1)
    result = snapshot()
    assert result.desirable_weight == 1.0
    assert result.undesirable_weight == pytest.approx(7.5)


@pytest.mark.django_db
def test_a_single_class_dataset_is_refused_clearly():
    add_labelled_examples(5, 0)
    with pytest.raises(SnapshotRefused, match="single-class"):
        snapshot()
    with pytest.raises(CommandError, match="single-class"):
        call_command("snapshot_dataset", "--holdout", "0")
    assert not DatasetSnapshot.objects.exists()


@pytest.mark.django_db
def test_a_custom_target_ratio():
    add_labelled_examples(1, 10)
    result = snapshot(target_ratio=1.0)
    assert (result.desirable_weight, result.undesirable_weight) == (pytest.approx(10.0), 1.0)
    assert result.params["target_ratio"] == 1.0


@pytest.mark.django_db
def test_downside_first_keeps_the_undesirable_side_heavier():
    add_labelled_examples(10, 1)
    result = snapshot(mode="downside_first")
    assert result.desirable_weight == 1.0
    assert result.undesirable_weight == pytest.approx(40 / 3)
    effective = result.desirable_weight * result.n_desirable / (result.undesirable_weight * result.n_undesirable)
    assert effective == pytest.approx(0.75) and result.params["mode"] == "downside_first"


@pytest.mark.django_db
def test_a_manual_override_is_stored_as_such():
    add_labelled_examples(1, 10)
    result = snapshot(manual_weights=(2.0, 0.5))
    assert (result.desirable_weight, result.undesirable_weight) == (2.0, 0.5)
    assert result.weight_rule == "manual override" and result.params["manual_weights"] == [2.0, 0.5]


@pytest.mark.django_db
def test_weights_balance_the_train_split_only():
    add_labelled_examples(30, 30)
    result = create_snapshot(holdout=0.5, seed=3)
    assert result.n_desirable + result.n_undesirable == result.n_train
    assert result.params["holdout_n_desirable"] + result.params["holdout_n_undesirable"] == result.n_holdout
    assert result.n_train + result.n_holdout == 60
