"""export_kto writes TRL KTO rows from a snapshot and refuses a tampered snapshot file."""

from __future__ import annotations

import json
import os
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from feedback.services import create_snapshot
from tests.feedback.helpers import add_generation, add_labelled_examples

pytestmark = pytest.mark.django_db


def export(snapshot_id, out, *args) -> dict:
    stdout = StringIO()
    call_command("export_kto", str(snapshot_id), "--out", str(out), *args, stdout=stdout)
    return json.loads(stdout.getvalue())


def test_rows_are_prompt_completion_and_a_boolean_label(tmp_path):
    add_labelled_examples(4, 2)
    chat = add_generation(prompt=[{"role": "user", "content": "hi"}], completion="hello")
    chat.votes.create(external_user_id="u", desirable=True)
    snapshot = create_snapshot(holdout=0.0)
    summary = export(snapshot.pk, tmp_path / "out" / "train.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert summary["rows"] == len(rows) == 7
    assert all(set(row) == {"prompt", "completion", "label"} and isinstance(row["label"], bool) for row in rows)
    assert sum(row["label"] for row in rows) == 5
    # A chat prompt makes a conversational row: TRL then wants the completion as messages too.
    assert {
        "prompt": [{"role": "user", "content": "hi"}],
        "completion": [{"role": "assistant", "content": "hello"}],
        "label": True,
    } in rows
    assert summary["desirable_weight"] == snapshot.desirable_weight


def test_trl_reads_the_export_as_its_unpaired_preference_type(tmp_path):
    import datasets
    from trl.data_utils import is_conversational

    add_labelled_examples(3, 3)
    out = tmp_path / "train.jsonl"
    export(create_snapshot(holdout=0.0).pk, out)
    dataset = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert dataset.column_names == ["prompt", "completion", "label"]
    assert dataset.features["label"].dtype == "bool"
    assert not is_conversational(dataset[0])


def test_trl_sees_chat_rows_as_conversational(tmp_path):
    from trl.data_utils import is_conversational

    for index, label in enumerate((True, False)):
        generation = add_generation(prompt=[{"role": "user", "content": f"q{index}"}], completion=f"a{index}")
        generation.votes.create(external_user_id="u", desirable=label)
    out = tmp_path / "chat.jsonl"
    export(create_snapshot(holdout=0.0).pk, out)
    assert all(is_conversational(json.loads(line)) for line in out.read_text().splitlines())


def test_the_splits_partition_the_snapshot(tmp_path):
    add_labelled_examples(30, 30)
    snapshot = create_snapshot(holdout=0.4, seed=1)
    counts = {
        split: export(snapshot.pk, tmp_path / f"{split}.jsonl", "--split", split)["rows"]
        for split in ("train", "holdout", "all")
    }
    assert counts == {"train": snapshot.n_train, "holdout": snapshot.n_holdout, "all": 60}


def test_a_tampered_snapshot_file_is_refused(tmp_path):
    add_labelled_examples(2, 2)
    snapshot = create_snapshot(holdout=0.0)
    os.chmod(snapshot.path, 0o644)
    with open(snapshot.path, "a") as handle:
        handle.write('{"prompt": "x", "completion": "y", "label": true, "split": "train"}\n')
    with pytest.raises(CommandError, match="expected"):
        export(snapshot.pk, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unknown_snapshot_is_a_clear_error(tmp_path):
    with pytest.raises(CommandError, match="snapshot 999 does not exist"):
        export(999, tmp_path / "out.jsonl")


def test_the_engine_reads_the_export(tmp_path):
    from training.kto.data import read_kto_jsonl

    add_labelled_examples(2, 1)
    chat = add_generation(prompt=[{"role": "user", "content": "hi"}], completion="hello")
    chat.votes.create(external_user_id="u", desirable=False)
    out = tmp_path / "train.jsonl"
    export(create_snapshot(holdout=0.0).pk, out)
    examples = read_kto_jsonl(out)
    assert sorted((str(e.prompt), e.completion, e.label) for e in examples) == sorted(
        [
            ("q0", "answer 0", True),
            ("q1", "answer 1", True),
            ("q2", "answer 2", False),
            (str([{"role": "user", "content": "hi"}]), "hello", False),
        ]
    )
