"""TRL's conversational format end to end: chat snapshots export completions as assistant messages,
TRL's own data utilities and KTOTrainer read them with tokens in every completion, and the importers
(and the engine) accept both the message form and the plain string."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from feedback.models import Generation, Vote
from feedback.services import create_snapshot
from tests.feedback.helpers import add_generation, write_jsonl

pytestmark = pytest.mark.django_db

CHAT = [
    ([{"role": "user", "content": "What is 2+2?"}], "4", True),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it true?"}], "No, it is not.", False),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "Paris.",
        True,
    ),
    ([{"role": "user", "content": "Please explain briefly."}], "Sure! Here is a short answer.", False),
]


def export_chat_snapshot(tmp_path) -> list[dict]:
    for prompt, completion, label in CHAT:
        add_generation(prompt=prompt, completion=completion).votes.create(external_user_id="u", desirable=label)
    out = tmp_path / "chat.jsonl"
    call_command("export_kto", str(create_snapshot(holdout=0.0).pk), "--out", str(out), stdout=StringIO())
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_trl_data_utilities_give_every_exported_chat_completion_its_text(tmp_path, sentencepiece_model_dir):
    """Issue 7 item 9: with `completion` as a plain string, maybe_apply_chat_template returned an
    empty completion for every chat row, so a TRL user trained on nothing."""
    from trl.data_utils import maybe_apply_chat_template

    from training.kto.modeling import load_tokenizer

    rows = export_chat_snapshot(tmp_path)
    assert all(row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}] for row in rows)
    tokenizer = load_tokenizer(sentencepiece_model_dir)
    for row in rows:
        rendered = maybe_apply_chat_template(row, tokenizer)
        assert rendered["completion"] == " " + row["completion"][0]["content"] + "</s>"


@pytest.mark.parametrize("family", ["bpe", "sentencepiece"])
def test_trl_kto_trainer_finds_tokens_in_every_exported_completion(tmp_path, family, request):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    from training.kto import data as kto_data
    from training.kto.modeling import load_tokenizer

    model_dir = request.getfixturevalue(f"{family}_model_dir")
    rows = export_chat_snapshot(tmp_path)
    tokenizer = load_tokenizer(model_dir)
    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        per_device_train_batch_size=2,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
    )
    trainer = KTOTrainer(model=model_dir, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    completions = trainer.train_dataset["completion_ids"]
    assert len(completions) == len(CHAT)
    for ids, row in zip(completions, rows):
        assert row["completion"][0]["content"].split()[-1].rstrip(".!") in tokenizer.decode(ids)
    # The engine reads the same file into the same token ids.
    path = write_jsonl(tmp_path / "again.jsonl", rows)
    ours = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(path))
    assert [list(example.completion_ids) for example in ours] == completions


def _labelled() -> set[tuple]:
    return {
        (json.dumps(vote.generation.prompt.content), vote.generation.completion, vote.desirable)
        for vote in Vote.objects.select_related("generation__prompt")
    }


def test_importers_read_assistant_messages_as_the_plain_string(tmp_path):
    chat = [{"role": "user", "content": "hi"}]
    message = [{"role": "assistant", "content": "hello"}]
    path = write_jsonl(
        tmp_path / "kto.jsonl",
        [
            {"prompt": chat, "completion": message, "label": True},
            {
                "prompt": [{"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": "5",
            },
        ],
    )
    with pytest.raises(CommandError):  # one file holds one format: kto then paired is refused
        call_command("import_feedback", path, stdout=StringIO())
    call_command(
        "import_feedback",
        write_jsonl(tmp_path / "a.jsonl", [{"prompt": chat, "completion": message, "label": True}]),
        stdout=StringIO(),
    )
    call_command(
        "import_feedback",
        write_jsonl(
            tmp_path / "b.jsonl",
            [
                {
                    "prompt": [{"role": "user", "content": "2+2?"}],
                    "chosen": [{"role": "assistant", "content": "4"}],
                    "rejected": "5",
                }
            ],
        ),
        stdout=StringIO(),
    )
    call_command(
        "import_feedback",
        write_jsonl(
            tmp_path / "c.jsonl",
            [{"prompt": chat, "completion": [{"role": "assistant", "content": "hey"}], "score": 0.9}],
        ),
        "--threshold",
        "0.5",
        stdout=StringIO(),
    )
    assert _labelled() == {
        (json.dumps(chat), "hello", True),
        (json.dumps([{"role": "user", "content": "2+2?"}]), "4", True),
        (json.dumps([{"role": "user", "content": "2+2?"}]), "5", False),
        (json.dumps(chat), "hey", True),
    }
    # The string form of the same row is the same generation: importing it again adds nothing.
    call_command(
        "import_feedback",
        write_jsonl(tmp_path / "d.jsonl", [{"prompt": chat, "completion": "hello", "label": True}]),
        stdout=StringIO(),
    )
    assert Generation.objects.filter(completion="hello").count() == 1


def test_an_export_imports_back_unchanged(tmp_path):
    rows = export_chat_snapshot(tmp_path)
    before = _labelled()
    summary = StringIO()
    call_command("import_feedback", write_jsonl(tmp_path / "back.jsonl", rows), stdout=summary)
    assert json.loads(summary.getvalue())["generations_created"] == 0
    assert Generation.objects.count() == len(CHAT) and {(p, c) for p, c, _ in _labelled()} == {
        (p, c) for p, c, _ in before
    }


@pytest.mark.parametrize(
    "row, expected",
    [
        (
            {"prompt": "q", "completion": [{"role": "assistant", "content": "a"}], "label": True},
            "line 1: field 'completion': is a list of messages but the prompt is a string",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "user", "content": "a"}],
                "label": True,
            },
            "line 1: field 'completion': as messages must be exactly one assistant message",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "completion": [{"role": "assistant", "content": " "}],
                "label": True,
            },
            "line 1: field 'completion': must not be empty",
        ),
    ],
)
def test_a_bad_message_completion_is_named(tmp_path, row, expected):
    with pytest.raises(CommandError) as excinfo:
        call_command("import_feedback", write_jsonl(tmp_path / "bad.jsonl", [row]), stdout=StringIO())
    assert expected in str(excinfo.value)
    assert Generation.objects.count() == 0
