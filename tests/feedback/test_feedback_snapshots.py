"""Dataset snapshots: majority labels, ties dropped, split by prompt, an immutable hashed file."""
from __future__ import annotations

import hashlib
import json
import os
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from feedback.models import DatasetSnapshot, Vote
from feedback.services import create_snapshot
from feedback_helpers import add_generation, add_labelled_examples

pytestmark = pytest.mark.django_db


def rows(snapshot: DatasetSnapshot) -> list[dict]:
    return [json.loads(line) for line in Path(snapshot.path).read_text().splitlines()]


def vote(generation, *labels):
    for index, label in enumerate(labels):
        Vote.objects.create(generation=generation, external_user_id=f"rater-{index}", desirable=label)


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


def test_one_example_per_prompt_and_completion():
    generation = add_generation(prompt="p", completion="c")
    vote(generation, True, True, True)
    add_labelled_examples(0, 1)
    assert [row["completion"] for row in rows(create_snapshot(holdout=0.0))].count("c") == 1


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


def test_the_file_hash_is_stored_and_the_file_is_read_only():
    add_labelled_examples(3, 2)
    snapshot = create_snapshot(holdout=0.0)
    data = Path(snapshot.path).read_bytes()
    assert hashlib.sha256(data).hexdigest() == snapshot.sha256
    assert not os.stat(snapshot.path).st_mode & 0o222
    assert not [name for name in os.listdir(Path(snapshot.path).parent) if name.endswith(".tmp")]


def test_votes_after_a_snapshot_do_not_change_it():
    add_labelled_examples(3, 2)
    first = create_snapshot(holdout=0.0)
    vote(add_generation(prompt="late", completion="x"), True)
    first.refresh_from_db()
    assert first.n_train == 5 and first.last_vote_id < Vote.objects.latest("id").id
    second = create_snapshot(holdout=0.0)
    assert second.n_train == 6 and second.path != first.path and Path(first.path).exists()


def test_the_same_votes_give_the_same_bytes():
    add_labelled_examples(3, 2)
    assert create_snapshot(holdout=0.2).sha256 == create_snapshot(holdout=0.2).sha256


def test_the_command_prints_one_json_line():
    add_labelled_examples(1, 10)
    out = StringIO()
    call_command("snapshot_dataset", "--holdout", "0", "--target-ratio", "1.333", stdout=out)
    summary = json.loads(out.getvalue())
    assert summary["id"] == DatasetSnapshot.objects.get().pk
    assert (summary["n_desirable"], summary["n_undesirable"]) == (1, 10)
    assert summary["desirable_weight"] == pytest.approx(13.33) and summary["undesirable_weight"] == 1.0
    assert len(summary["sha256"]) == 64


def test_no_votes_is_a_clear_refusal():
    with pytest.raises(CommandError, match="no votes yet"):
        call_command("snapshot_dataset")
