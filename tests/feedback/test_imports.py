"""Each import format becomes the right binary examples (prompt, completion, label).

A bad file is rejected with the line and the field named, and nothing from it is saved.
"""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from feedback.models import Generation, ImportBatch, Prompt, Vote
from tests.feedback.helpers import write_jsonl

# --- import formats ----------------------------------------


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


@pytest.mark.django_db
def test_kto_unpaired_rows_become_one_vote_each(tmp_path):
    path = write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {"prompt": "2+2?", "completion": "4", "label": True},
            {"prompt": "2+2?", "completion": "5", "label": False},
            {"prompt": [{"role": "user", "content": "hi"}], "completion": "hello", "label": True},
        ],
    )
    summary = run_import(path, "--format", "kto")
    assert summary["format"] == "kto"
    assert (summary["lines"], summary["prompts_created"], summary["generations_created"], summary["votes_created"]) == (
        3,
        2,
        3,
        3,
    )
    assert labelled() == {
        (json.dumps("2+2?"), "4", True),
        (json.dumps("2+2?"), "5", False),
        (json.dumps([{"role": "user", "content": "hi"}]), "hello", True),
    }
    assert Prompt.objects.get(content=[{"role": "user", "content": "hi"}]).is_chat


@pytest.mark.django_db
def test_paired_rows_become_one_desirable_and_one_undesirable(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"}]
    )
    summary = run_import(path, "--format", "paired")
    assert summary["votes_created"] == 2
    assert labelled() == {
        (json.dumps("Capital of France?"), "Paris", True),
        (json.dumps("Capital of France?"), "Lyon", False),
    }


@pytest.mark.django_db
def test_hh_transcripts_share_the_dialogue_up_to_the_last_assistant_turn(tmp_path):
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a fact."
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {
                "chosen": dialogue + "\n\nAssistant: Octopuses have three hearts.",
                "rejected": dialogue + "\n\nAssistant: No.",
            }
        ],
    )
    summary = run_import(path, "--format", "hh")
    assert summary["votes_created"] == 2
    prompt = Prompt.objects.get()
    assert prompt.content == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a fact."},
    ]
    assert {(g.completion, g.votes.get().desirable) for g in Generation.objects.all()} == {
        ("Octopuses have three hearts.", True),
        ("No.", False),
    }


@pytest.mark.django_db
def test_scored_rows_split_at_the_threshold_and_drop_ties(tmp_path):
    path = write_jsonl(
        tmp_path / "scored.jsonl",
        [
            {"prompt": "p", "completion": "great", "score": 9},
            {"prompt": "p", "completion": "poor", "score": 2},
            {"prompt": "p", "completion": "meh", "score": 5},
        ],
    )
    summary = run_import(path, "--format", "scored", "--threshold", "5", "--weight-by-distance")
    assert summary["dropped_at_threshold"] == 1
    assert {(v.generation.completion, v.desirable, v.weight) for v in Vote.objects.all()} == {
        ("great", True, 4.0),
        ("poor", False, 3.0),
    }


@pytest.mark.django_db
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


@pytest.mark.django_db
def test_reimporting_the_same_file_adds_nothing(tmp_path):
    path = write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {"prompt": "q", "completion": "a", "label": True},
            # A second rater on the same item stays a second vote (it counts for the majority).
            {"prompt": "q", "completion": "a", "label": False},
        ],
    )
    first = run_import(path)
    second = run_import(path)
    assert (first["votes_created"], first["generations_created"]) == (2, 1)
    assert (second["votes_created"], second["votes_existing"], second["generations_created"]) == (0, 2, 0)
    assert Vote.objects.count() == 2
    assert ImportBatch.objects.count() == 2


@pytest.mark.django_db
def test_one_y_per_x_keeps_one_example_per_pair_reproducibly(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)],
    )
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


# --- import errors ----------------------------------------


GOOD = {"prompt": "q", "completion": "a", "label": True}


def rejected_message(path, *args) -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("import_feedback", str(path), *args)
    return str(excinfo.value)


def assert_nothing_saved():
    assert (Prompt.objects.count(), Generation.objects.count(), Vote.objects.count(), ImportBatch.objects.count()) == (
        0,
        0,
        0,
        0,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"prompt": "q", "completion": "a", "label": tru', "line 3: malformed JSON"),
        (json.dumps({"prompt": "q", "label": True}), "line 3: missing field 'completion'"),
        (
            json.dumps({"prompt": "q", "completion": "a", "label": "yes"}),
            "line 3: field 'label': must be a JSON boolean",
        ),
        (
            json.dumps({"prompt": 7, "completion": "a", "label": True}),
            "line 3: field 'prompt': must be a string or a list",
        ),
        (
            json.dumps({"prompt": "q", "completion": "   ", "label": True}),
            "line 3: field 'completion': must not be empty",
        ),
        (
            json.dumps({"prompt": [{"role": "robot", "content": "x"}], "completion": "a", "label": True}),
            "line 3: field 'prompt[0].role'",
        ),
        ("[1, 2]", "line 3: each line must be a JSON object"),
    ],
)
def test_a_bad_line_late_in_the_file_rejects_the_whole_file(tmp_path, bad_line, expected):
    # More good lines than one write chunk precede the bad one, so rows were already written.
    from feedback.services.imports import CHUNK_SIZE

    rows = [GOOD, {"prompt": "other", "completion": "b", "label": False}, bad_line]
    rows = [{"prompt": f"p{i}", "completion": "c", "label": True} for i in range(CHUNK_SIZE + 5)] + rows
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    message = rejected_message(path)
    expected = expected.replace("line 3", f"line {CHUNK_SIZE + 5 + 3}")
    assert expected in message
    assert "nothing was imported" in message
    assert_nothing_saved()


@pytest.mark.django_db
def test_unknown_format_is_named(tmp_path):
    message = rejected_message(write_jsonl(tmp_path / "f.jsonl", [GOOD]), "--format", "csv")
    assert "unknown format 'csv'" in message and "kto" in message
    assert_nothing_saved()


@pytest.mark.django_db
def test_a_file_that_is_not_utf8_is_rejected_at_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(GOOD).encode()
        + b"\n"
        + '{"prompt": "caf\xe9", "completion": "a", "label": true}\n'.encode("latin-1")
    )
    message = rejected_message(path)
    assert "line 2: not valid UTF-8" in message
    assert_nothing_saved()


@pytest.mark.django_db
def test_a_huge_line_is_rejected_without_reading_it_whole(tmp_path, settings):
    settings.IMPORT_MAX_LINE_BYTES = 1000
    path = write_jsonl(tmp_path / "huge.jsonl", [GOOD, {"prompt": "q", "completion": "x" * 5000, "label": True}])
    assert "line 2: longer than the limit of 1000 bytes" in rejected_message(path)
    assert_nothing_saved()


@pytest.mark.django_db
def test_scored_without_threshold_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "q", "completion": "a", "score": 3}])
    assert "needs a threshold" in rejected_message(path)
    assert_nothing_saved()


@pytest.mark.django_db
def test_mixed_formats_in_one_file_name_the_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert "line 2: missing field 'completion'" in rejected_message(path)
    assert_nothing_saved()


@pytest.mark.django_db
def test_hh_transcripts_that_differ_before_the_last_turn_keep_each_side_with_its_own_prompt(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: different\n\nAssistant: c"}],
    )
    summary = run_import(path, "--format", "hh")
    assert summary["votes_created"] == 2 and summary["skipped"] == 0
    assert labelled() == {
        (json.dumps([{"role": "user", "content": "a"}]), "b", True),
        (json.dumps([{"role": "user", "content": "different"}]), "c", False),
    }


@pytest.mark.django_db
def test_an_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert "holds no JSON lines" in rejected_message(path)
    assert_nothing_saved()
