"""Each import format becomes the right binary examples (prompt, completion, label)."""
from __future__ import annotations

import json

import pytest
from django.core.management import call_command

from feedback.models import Generation, ImportBatch, Prompt, Vote
from feedback_helpers import write_jsonl

pytestmark = pytest.mark.django_db


def run_import(path, *args) -> dict:
    from io import StringIO

    out = StringIO()
    call_command("import_feedback", path, *args, stdout=out)
    return json.loads(out.getvalue())


def labelled() -> set[tuple]:
    return {
        (json.dumps(vote.generation.prompt.content), vote.generation.completion, vote.desirable)
        for vote in Vote.objects.select_related("generation__prompt")
    }


def test_kto_unpaired_rows_become_one_vote_each(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "2+2?", "completion": "4", "label": True},
        {"prompt": "2+2?", "completion": "5", "label": False},
        {"prompt": [{"role": "user", "content": "hi"}], "completion": "hello", "label": True},
    ])
    summary = run_import(path, "--format", "kto")
    assert summary["format"] == "kto"
    assert (summary["lines"], summary["prompts_created"], summary["generations_created"], summary["votes_created"]) == (3, 2, 3, 3)
    assert labelled() == {
        (json.dumps("2+2?"), "4", True),
        (json.dumps("2+2?"), "5", False),
        (json.dumps([{"role": "user", "content": "hi"}]), "hello", True),
    }
    assert Prompt.objects.get(content=[{"role": "user", "content": "hi"}]).is_chat


def test_paired_rows_become_one_desirable_and_one_undesirable(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"}])
    summary = run_import(path, "--format", "paired")
    assert summary["votes_created"] == 2
    assert labelled() == {(json.dumps("Capital of France?"), "Paris", True), (json.dumps("Capital of France?"), "Lyon", False)}


def test_hh_transcripts_share_the_dialogue_up_to_the_last_assistant_turn(tmp_path):
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a fact."
    path = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": dialogue + "\n\nAssistant: Octopuses have three hearts.",
        "rejected": dialogue + "\n\nAssistant: No.",
    }])
    summary = run_import(path, "--format", "hh")
    assert summary["votes_created"] == 2
    prompt = Prompt.objects.get()
    assert prompt.content == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fact."},
    ]
    assert {(g.completion, g.votes.get().desirable) for g in Generation.objects.all()} == {
        ("Octopuses have three hearts.", True), ("No.", False)}


def test_scored_rows_split_at_the_threshold_and_drop_ties(tmp_path):
    path = write_jsonl(tmp_path / "scored.jsonl", [
        {"prompt": "p", "completion": "great", "score": 9},
        {"prompt": "p", "completion": "poor", "score": 2},
        {"prompt": "p", "completion": "meh", "score": 5},
    ])
    summary = run_import(path, "--format", "scored", "--threshold", "5", "--weight-by-distance")
    assert summary["dropped_at_threshold"] == 1
    assert {(v.generation.completion, v.desirable, v.weight) for v in Vote.objects.all()} == {
        ("great", True, 4.0), ("poor", False, 3.0)}


def test_auto_detects_each_format(tmp_path):
    cases = {
        "kto": {"prompt": "a", "completion": "b", "label": False},
        "paired": {"prompt": "a", "chosen": "b", "rejected": "c"},
        "hh": {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"},
        "scored": {"prompt": "a", "completion": "b", "score": 0.9},
    }
    for fmt, row in cases.items():
        args = ["--threshold", "0.5"] if fmt == "scored" else []
        assert run_import(write_jsonl(tmp_path / f"{fmt}.jsonl", [row]), *args)["format"] == fmt


def test_reimporting_the_same_file_adds_nothing(tmp_path):
    path = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "q", "completion": "a", "label": True},
        # A second rater on the same item stays a second vote (it counts for the majority).
        {"prompt": "q", "completion": "a", "label": False},
    ])
    first = run_import(path)
    second = run_import(path)
    assert (first["votes_created"], first["generations_created"]) == (2, 1)
    assert (second["votes_created"], second["votes_existing"], second["generations_created"]) == (0, 2, 0)
    assert Vote.objects.count() == 2
    assert ImportBatch.objects.count() == 2


def test_one_y_per_x_keeps_one_example_per_pair_reproducibly(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)])
    summary = run_import(path, "--one-y-per-x")
    kept = set(Vote.objects.values_list("generation__completion", "desirable"))
    assert summary["votes_created"] == 40 and Generation.objects.count() == 40
    assert {completion.split()[1] for completion, _ in kept} == {str(i) for i in range(40)}
    labels = [desirable for _, desirable in kept]
    assert 0 < sum(labels) < 40  # both kinds survive: the choice is random, not always "chosen"
    assert all(desirable == completion.startswith("good") for completion, desirable in kept)
    Generation.objects.all().delete()  # and their votes: the same file and seed must pick the same
    run_import(path, "--one-y-per-x")
    assert set(Vote.objects.values_list("generation__completion", "desirable")) == kept
