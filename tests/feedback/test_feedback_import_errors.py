"""A bad file is rejected with the line and the field named, and nothing from it is saved."""
from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from feedback.models import Generation, ImportBatch, Prompt, Vote
from feedback_helpers import write_jsonl

pytestmark = pytest.mark.django_db

GOOD = {"prompt": "q", "completion": "a", "label": True}


def rejected_message(path, *args) -> str:
    with pytest.raises(CommandError) as excinfo:
        call_command("import_feedback", str(path), *args)
    return str(excinfo.value)


def assert_nothing_saved():
    assert (Prompt.objects.count(), Generation.objects.count(), Vote.objects.count(), ImportBatch.objects.count()) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    "bad_line, expected",
    [
        ('{"prompt": "q", "completion": "a", "label": tru', "line 3: malformed JSON"),
        (json.dumps({"prompt": "q", "label": True}), "line 3: missing field 'completion'"),
        (json.dumps({"prompt": "q", "completion": "a", "label": "yes"}), "line 3: field 'label': must be a JSON boolean"),
        (json.dumps({"prompt": 7, "completion": "a", "label": True}), "line 3: field 'prompt': must be a string or a list"),
        (json.dumps({"prompt": "q", "completion": "   ", "label": True}), "line 3: field 'completion': must not be empty"),
        (json.dumps({"prompt": [{"role": "robot", "content": "x"}], "completion": "a", "label": True}),
         "line 3: field 'prompt[0].role'"),
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


def test_unknown_format_is_named(tmp_path):
    message = rejected_message(write_jsonl(tmp_path / "f.jsonl", [GOOD]), "--format", "csv")
    assert "unknown format 'csv'" in message and "kto" in message
    assert_nothing_saved()


def test_a_file_that_is_not_utf8_is_rejected_at_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"prompt": "caf\xe9", "completion": "a", "label": true}\n'.encode("latin-1"))
    message = rejected_message(path)
    assert "line 2: not valid UTF-8" in message
    assert_nothing_saved()


def test_a_huge_line_is_rejected_without_reading_it_whole(tmp_path, settings):
    settings.IMPORT_MAX_LINE_BYTES = 1000
    path = write_jsonl(tmp_path / "huge.jsonl", [GOOD, {"prompt": "q", "completion": "x" * 5000, "label": True}])
    assert "line 2: longer than the limit of 1000 bytes" in rejected_message(path)
    assert_nothing_saved()


def test_scored_without_threshold_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "q", "completion": "a", "score": 3}])
    assert "needs a threshold" in rejected_message(path)
    assert_nothing_saved()


def test_mixed_formats_in_one_file_name_the_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert "line 2: missing field 'completion'" in rejected_message(path)
    assert_nothing_saved()


def test_hh_transcripts_that_do_not_share_a_dialogue_are_rejected(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{
        "chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: different\n\nAssistant: c"}])
    assert "line 1: field 'rejected': does not share the dialogue" in rejected_message(path, "--format", "hh")
    assert_nothing_saved()


def test_an_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert "holds no JSON lines" in rejected_message(path)
    assert_nothing_saved()
