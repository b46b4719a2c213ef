"""--on-invalid skip: real datasets with a few bad rows import everything valid and report the rest.

The HH file below reproduces what stops Anthropic's HH test split at line 87: a row whose final
Assistant turn is empty on one side, and rows whose two dialogues differ before the last turn.
"""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from feedback.models import Generation, ImportBatch, Vote
from feedback.services.imports import import_feedback

pytestmark = pytest.mark.django_db

LINE_OF_THE_EMPTY_TURN = 87


def hh_row(i: int, chosen_last: str | None = None, rejected_last: str | None = None, edited: bool = False) -> dict:
    dialogue = f"\n\nHuman: Question {i}?\n\nAssistant: Let me think.\n\nHuman: Go on."
    edited_dialogue = dialogue.replace("Let me think.", "Let me think again.") if edited else dialogue
    chosen = f"Answer {i}." if chosen_last is None else chosen_last
    rejected = f"No {i}." if rejected_last is None else rejected_last
    return {"chosen": f"{dialogue}\n\nAssistant: {chosen}", "rejected": f"{edited_dialogue}\n\nAssistant: {rejected}"}


def hh_like_file(path: Path) -> Path:
    rows = [hh_row(i) for i in range(1, 91)]
    rows[LINE_OF_THE_EMPTY_TURN - 1] = hh_row(LINE_OF_THE_EMPTY_TURN, chosen_last="")  # empty chosen side
    rows[88 - 1] = hh_row(88, rejected_last=" ")  # empty rejected side
    rows[89 - 1] = hh_row(89, edited=True)  # an earlier Assistant turn edited on one side
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def run(path, *args) -> dict:
    out = StringIO()
    call_command("import_feedback", str(path), "--format", "hh", *args, stdout=out)
    return json.loads(out.getvalue())


def test_by_default_the_first_bad_line_rejects_the_whole_file(tmp_path):
    path = hh_like_file(tmp_path / "hh-test.jsonl")
    with pytest.raises(CommandError) as refused:
        run(path)
    assert f"line {LINE_OF_THE_EMPTY_TURN}: field 'chosen': the last Assistant turn is empty" in str(refused.value)
    assert "nothing was imported" in str(refused.value)
    assert not Vote.objects.exists() and not ImportBatch.objects.exists()


def test_skip_keeps_the_partner_of_an_empty_side_and_both_sides_of_an_edited_dialogue(tmp_path, settings):
    settings.DATA_DIR = tmp_path / "var"
    path = hh_like_file(tmp_path / "hh-test.jsonl")
    summary = run(path, "--on-invalid", "skip")
    # 90 rows x 2 sides, less the two empty sides.
    assert summary["votes_created"] == 178
    assert summary["skipped"] == 2
    report = [json.loads(line) for line in Path(summary["skipped_report"]).read_text().splitlines()]
    assert report == [
        {"line": 87, "field": "chosen", "reason": "field 'chosen': the last Assistant turn is empty"},
        {"line": 88, "field": "rejected", "reason": "field 'rejected': the last Assistant turn is empty"},
    ]
    partners = Generation.objects.filter(completion__in=["No 87.", "Answer 88."])
    kept = {(g.completion, g.votes.get().desirable) for g in partners}
    assert kept == {("No 87.", False), ("Answer 88.", True)}
    edited = Generation.objects.filter(completion__in=["Answer 89.", "No 89."]).select_related("prompt")
    prompts = {g.completion: g.prompt.content[1]["content"] for g in edited}
    assert prompts == {"Answer 89.": "Let me think.", "No 89.": "Let me think again."}
    assert ImportBatch.objects.get().n_skipped == 2


def test_skip_reports_every_kind_of_bad_line_and_imports_the_rest(tmp_path, settings):
    settings.DATA_DIR = tmp_path / "var"
    settings.IMPORT_MAX_LINE_BYTES = 200
    lines = [
        json.dumps({"prompt": "q1", "completion": "a1", "label": True}),
        "{not json",
        json.dumps({"prompt": "q3", "completion": "a3", "label": "yes"}),
        json.dumps([1, 2]),
        json.dumps({"prompt": "q5", "completion": "x" * 300, "label": False}),
        json.dumps({"prompt": "q6", "completion": "a6"}),
        json.dumps({"prompt": "q7", "completion": "a7", "label": False}),
    ]
    path = tmp_path / "kto.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    with path.open("rb") as stream:
        batch = import_feedback(stream, filename="kto.jsonl", fmt="kto", on_invalid="skip")
    assert batch.n_votes_created == 2
    assert {(v.generation.completion, v.desirable) for v in Vote.objects.all()} == {("a1", True), ("a7", False)}
    report = [json.loads(line) for line in Path(batch.skipped_report).read_text().splitlines()]
    assert [(item["line"], item["field"]) for item in report] == [
        (2, None),
        (3, "label"),
        (4, None),
        (5, None),
        (6, "label"),
        (8, None),
    ]
    assert "malformed JSON" in report[0]["reason"] and "longer than the limit" in report[3]["reason"]
    assert "not valid UTF-8" in report[5]["reason"]
    assert batch.summary()["skipped"] == 6


def test_a_clean_file_in_skip_mode_writes_no_report(tmp_path, settings):
    settings.DATA_DIR = tmp_path / "var"
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a", "label": True}) + "\n")
    summary = json.loads(_call(path, "--on-invalid", "skip"))
    assert summary["skipped"] == 0 and summary["skipped_report"] is None


def _call(path, *args) -> str:
    out = StringIO()
    call_command("import_feedback", str(path), *args, stdout=out)
    return out.getvalue()
