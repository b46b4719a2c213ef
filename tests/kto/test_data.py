"""Reading, validating, tokenizing and batching KTO data."""

from __future__ import annotations

import json

import pytest

from training.kto import data as kto_data
from training.kto.demo import build_tokenizer


def write(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"prompt": "What is 1+2?", "completion": "3", "label": True})


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "x", "completion": "y", "label": tru', "malformed JSON"),
        ('{"prompt": "x", "label": true}', "missing field 'completion'"),
        ('{"completion": "y", "label": true}', "missing field 'prompt'"),
        ('{"prompt": "x", "completion": "y"}', "missing field 'label'"),
        ('{"prompt": "x", "completion": "y", "label": "true"}', "field 'label' must be a JSON boolean"),
        ('{"prompt": "x", "completion": "y", "label": 1}', "field 'label' must be a JSON boolean"),
        ('{"prompt": "x", "completion": "   ", "label": false}', "field 'completion' is empty"),
        ('{"prompt": 5, "completion": "y", "label": false}', "field 'prompt' must be a string"),
        ('{"prompt": [{"role": "user"}], "completion": "y", "label": false}', "'prompt' message 0"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_rows_are_named_by_line_and_field(tmp_path, bad_line, message):
    path = write(tmp_path, [GOOD, "", GOOD, bad_line, GOOD])
    with pytest.raises(kto_data.DataError) as error:
        kto_data.read_kto_jsonl(path)
    assert f"{path}:4:" in str(error.value)  # the blank line still counts as a line
    assert message in str(error.value)


def test_reads_chat_prompts_and_ignores_extra_keys(tmp_path):
    chat = [{"role": "system", "content": "be exact"}, {"role": "user", "content": "What is 2+2?"}]
    path = write(tmp_path, [GOOD, json.dumps({"prompt": chat, "completion": "4", "label": False, "votes": 3})])
    examples = kto_data.read_kto_jsonl(path)
    assert [e.label for e in examples] == [True, False]
    assert examples[1].prompt == chat and examples[1].line == 2


def test_tokenization_uses_chat_template_and_appends_eos():
    tokenizer = build_tokenizer()  # the demo tokenizer has a chat template rendering user turns
    plain = kto_data.KTOExample("What is 2+2?", "4", True, 1)
    chat = kto_data.KTOExample([{"role": "user", "content": "What is 2+2?"}], "4", True, 2)
    tokenized_plain, tokenized_chat = kto_data.tokenize_examples(tokenizer, [plain, chat])
    assert tokenized_chat.prompt_ids == tokenized_plain.prompt_ids  # template rendered, BOS once
    assert tokenized_plain.prompt_ids[0] == tokenizer.bos_token_id
    assert tokenized_plain.completion_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(tokenized_plain.completion_ids, skip_special_tokens=True) == "4"


def test_truncation_keeps_the_completion_and_trims_the_prompt_from_the_left():
    prompt, completion = list(range(100, 120)), [1, 2, 3, 4]
    ids, n_prompt = kto_data.join_truncated(prompt, completion, max_length=10)
    assert ids == list(range(114, 120)) + completion and n_prompt == 6
    # A prompt that fits stays whole, also when it is longer than the room left over after it.
    assert kto_data.join_truncated(list(range(100, 106)), [1], max_length=10) == ([*range(100, 106), 1], 6)
    batch = kto_data.collate([(prompt, completion), ([7], [8])], max_length=10, pad_token_id=0)
    assert batch["input_ids"].shape == (2, 10)
    assert batch["completion_mask"][0].tolist() == [False] * 6 + [True] * 4  # completion-only mask
    assert batch["completion_mask"][1].tolist() == [False, True] + [False] * 8
    assert batch["attention_mask"][1].tolist() == [1, 1] + [0] * 8


@pytest.mark.parametrize("size", [2, 3, 4, 7, 8, 32])
def test_mismatched_pairs_never_pair_an_example_with_itself(size):
    partners = kto_data.mismatched_partners(size)
    assert partners == [(i + 1) % size for i in range(size)]
    assert all(i != j for i, j in enumerate(partners))
    assert sorted(partners) == list(range(size))  # every completion is used exactly once


def test_microbatch_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        kto_data.mismatched_partners(1)


def test_epochs_are_reshuffled_reproducibly_and_bucketed_by_length():
    lengths = [(index * 37) % 50 + 5 for index in range(200)]
    epoch0 = kto_data.plan_epoch(lengths, 8, seed=3, epoch=0)
    assert epoch0 == kto_data.plan_epoch(lengths, 8, seed=3, epoch=0)
    assert epoch0 != kto_data.plan_epoch(lengths, 8, seed=3, epoch=1)
    assert all(len(batch) == 8 for batch in epoch0)
    flat = [index for batch in epoch0 for index in batch]
    assert len(flat) == len(set(flat)) == 200  # all 200 fit in 25 microbatches: nothing lost or repeated
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch0) / len(epoch0)
    assert spread < 10  # random microbatches of these lengths spread over ~40 tokens


def test_pairs_for_dpo_from_kto_rows(tmp_path):
    rows = [
        {"prompt": "a", "completion": "good", "label": True},
        {"prompt": "a", "completion": "bad", "label": False},
        {"prompt": "b", "completion": "only bad", "label": False},
    ]
    path = write(tmp_path, [json.dumps(row) for row in rows])
    pairs = kto_data.read_preference_pairs(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("a", "good", "bad")]
