"""Tokenization like TRL 1.16's KTOTrainer, on real tokenizer families (byte-level BPE, SentencePiece)."""

from __future__ import annotations

import json

import pytest
import torch

from training.kto import data as kto_data
from training.kto.modeling import load_tokenizer


def standard_rows(eos_token: str) -> list[dict]:
    return [
        {"prompt": "Answer: ", "completion": "yes", "label": True},  # BPE: 'Ġyes' spans the boundary
        {"prompt": "2+2=", "completion": "4", "label": False},  # SentencePiece: no '▁' before '4'
        {"prompt": "Is it true?", "completion": " yes" + eos_token, "label": True},  # EOS already there
        {"prompt": "What is 3+4?\n", "completion": "Answer: 7. café", "label": False},
        {"prompt": "Hello, how are you today?", "completion": " I am fine, thank you.", "label": True},
        {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog.", "label": False},
    ]


CHAT_ROWS = [
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
        "label": True,
    },
    {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Is it true?"},
        ],
        "completion": [{"role": "assistant", "content": "No, it is not."}],
        "label": False,
    },
    {
        "prompt": [{"role": "user", "content": "What is the capital of France?"}],
        "completion": [{"role": "assistant", "content": "Paris."}],
        "label": True,
    },
    {
        "prompt": [{"role": "user", "content": "Please explain briefly."}],
        "completion": [{"role": "assistant", "content": "Sure! Here is a short answer."}],
        "label": False,
    },
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def trl_trainer(model_dir, rows, tmp_path, max_length=1024, batch_size=2):
    """TRL's own KTOTrainer on the same rows: its train_dataset holds its prompt/completion ids."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(
        output_dir=str(tmp_path / "trl"),
        report_to="none",
        per_device_train_batch_size=batch_size,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        max_length=max_length,
        dataset_num_proc=None,
    )
    return KTOTrainer(
        model=model_dir, args=args, train_dataset=Dataset.from_list(rows), processing_class=load_tokenizer(model_dir)
    )


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_token_ids_equal_trls(family_model_dir, conversational, tmp_path):
    tokenizer = load_tokenizer(family_model_dir)
    rows = CHAT_ROWS if conversational else standard_rows(tokenizer.eos_token)
    trainer = trl_trainer(family_model_dir, rows, tmp_path)
    ours = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert [list(example.prompt_ids) for example in ours] == trainer.train_dataset["prompt_ids"]
    assert [list(example.completion_ids) for example in ours] == trainer.train_dataset["completion_ids"]


def test_bpe_completion_is_tokenized_with_its_prompt(bpe_model_dir):
    """Issue 7 item 3: 'Answer: ' | 'yes' became [..., 'Ġ'] | ['yes'] where the model sees 'Ġyes'."""
    tokenizer = load_tokenizer(bpe_model_dir)
    prompt_ids, completion_ids = kto_data.tokenize_example(tokenizer, "Answer: ", "yes")
    assert tokenizer.convert_ids_to_tokens(completion_ids) == ["Ġyes", tokenizer.eos_token]
    assert tokenizer.convert_ids_to_tokens(prompt_ids)[-1] == ":"
    assert prompt_ids + completion_ids == tokenizer("Answer: yes" + tokenizer.eos_token)["input_ids"]


def test_sentencepiece_completion_gains_no_word_boundary(sentencepiece_model_dir):
    """Issue 7 item 3: a separately tokenized completion gained a leading '▁' that is not in the data."""
    tokenizer = load_tokenizer(sentencepiece_model_dir)
    for prompt, completion in [("2+2=", "4"), ("What is 3+4? Answer:", "7")]:
        prompt_ids, completion_ids = kto_data.tokenize_example(tokenizer, prompt, completion)
        assert prompt_ids + completion_ids == tokenizer(prompt + completion + "</s>")["input_ids"]
        assert not tokenizer.convert_ids_to_tokens(completion_ids)[0].startswith("▁")
        assert prompt_ids[0] == tokenizer.bos_token_id  # BOS once, from the tokenizer, as in TRL


def test_eos_is_appended_only_when_missing(family_model_dir):
    """Issue 7 item 4: ' yes</s>' became 'Ġyes', '</s>', '</s>'."""
    tokenizer = load_tokenizer(family_model_dir)
    eos = tokenizer.eos_token_id
    for completion in (" yes", " yes" + tokenizer.eos_token):
        _, completion_ids = kto_data.tokenize_example(tokenizer, "Is it true?", completion)
        assert completion_ids[-1] == eos and completion_ids.count(eos) == 1


def test_conversational_completion_ends_with_the_templates_end_of_turn(bpe_model_dir, sentencepiece_model_dir):
    """Issue 7 item 4: chat completions skipped the template (plain text + EOS)."""
    prompt = [{"role": "user", "content": "What is 2+2?"}]
    chatml = load_tokenizer(bpe_model_dir)
    prompt_ids, completion_ids = kto_data.tokenize_example(chatml, prompt, "4")
    assert chatml.convert_ids_to_tokens(completion_ids) == ["4", "<|im_end|>", "Ċ"]  # no <|endoftext|>
    assert chatml.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    inst = load_tokenizer(sentencepiece_model_dir)
    prompt_ids, completion_ids = kto_data.tokenize_example(inst, prompt, "4")
    assert inst.convert_ids_to_tokens(completion_ids) == ["▁4", "</s>"]
    assert prompt_ids.count(inst.bos_token_id) == 1  # the template's BOS, not a second one


def test_string_completion_of_a_chat_prompt_is_the_assistant_message(family_model_dir, tmp_path):
    """Older Prospect exports wrote chat completions as strings: read as the assistant message."""
    tokenizer = load_tokenizer(family_model_dir)
    as_messages = CHAT_ROWS[:2]
    as_strings = [dict(row, completion=row["completion"][0]["content"]) for row in as_messages]
    read = [
        kto_data.read_kto_jsonl(write_jsonl(tmp_path / f"{name}.jsonl", rows))
        for name, rows in (("messages", as_messages), ("strings", as_strings))
    ]
    assert kto_data.tokenize_examples(tokenizer, read[0]) == kto_data.tokenize_examples(tokenizer, read[1])


def test_demo_tokenizer_renders_assistant_turns_like_its_training_data():
    from training.kto.demo import build_tokenizer

    tokenizer = build_tokenizer()
    chat = kto_data.tokenize_example(tokenizer, [{"role": "user", "content": "What is 2+2?"}], "4")
    assert chat == kto_data.tokenize_example(tokenizer, "What is 2+2?", "4")


def test_a_template_without_assistant_turns_is_a_clear_error(bpe_model_dir, tmp_path):
    tokenizer = load_tokenizer(bpe_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    examples = kto_data.read_kto_jsonl(write_jsonl(tmp_path / "d.jsonl", CHAT_ROWS[:1]))
    with pytest.raises(kto_data.DataError, match="line 1: the completion has no tokens"):
        kto_data.tokenize_examples(tokenizer, examples)


def test_messages_completion_needs_a_chat_prompt(tmp_path):
    row = {"prompt": "hi", "completion": [{"role": "assistant", "content": "hello"}], "label": True}
    with pytest.raises(kto_data.DataError, match=r"d.jsonl:1: field 'completion' is a list of messages"):
        kto_data.read_kto_jsonl(write_jsonl(tmp_path / "d.jsonl", [row]))


def test_max_prompt_length_keeps_the_prompts_end(sentencepiece_model_dir):
    tokenizer = load_tokenizer(sentencepiece_model_dir)
    full_prompt, completion = kto_data.tokenize_example(tokenizer, "The quick brown fox jumps over the lazy", " dog.")
    prompt, same_completion = kto_data.tokenize_example(
        tokenizer, "The quick brown fox jumps over the lazy", " dog.", max_prompt_length=3
    )
    assert prompt == full_prompt[-3:] and same_completion == completion


@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_trl_compat_truncation_equals_trls(family_model_dir, conversational, tmp_path):
    """--trl-compat: rows whose prompt fills max_length are dropped, the rest cut at max_length
    (keeping the start), exactly as TRL's dataset filter and collator do."""
    from training.kto.trainer import TrainConfig, prepare_examples

    tokenizer = load_tokenizer(family_model_dir)
    rows = CHAT_ROWS if conversational else standard_rows(tokenizer.eos_token)
    full = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(write_jsonl(tmp_path / "d.jsonl", rows)))
    lengths = sorted(len(example.prompt_ids) for example in full)
    max_length = lengths[len(lengths) // 2]  # some prompts fill it, others leave a part of the completion
    trainer = trl_trainer(family_model_dir, rows, tmp_path, max_length=max_length)
    config = TrainConfig(
        model=family_model_dir, data=str(tmp_path / "d.jsonl"), out="", max_length=max_length, trl_compat=True
    )
    ours, _, _ = prepare_examples(config, tokenizer)
    assert 0 < len(ours) == len(trainer.train_dataset) < len(rows)
    expected = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    batch = kto_data.collate(
        [(e.prompt_ids, e.completion_ids) for e in ours], max_length, tokenizer.pad_token_id, truncation="keep_start"
    )
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert torch.equal(batch["attention_mask"], expected["attention_mask"])
    assert torch.equal(batch["completion_mask"].long(), expected["completion_mask"])


def test_default_truncation_keeps_the_completion_where_trl_cuts_it(bpe_model_dir):
    """The engine's deliberate difference (documented in data.join_truncated): a long prompt is
    trimmed from the left, so the completion keeps its end and EOS; TRL's keep-start cut loses them."""
    tokenizer = load_tokenizer(bpe_model_dir)
    prompt_ids, completion_ids = kto_data.tokenize_example(tokenizer, "The quick brown fox " * 5, "jumps over.")
    max_length = len(prompt_ids) + 2
    ours, n_prompt = kto_data.join_truncated(prompt_ids, completion_ids, max_length)
    assert ours[n_prompt:] == completion_ids and ours[-1] == tokenizer.eos_token_id and len(ours) == max_length
    trl, _ = kto_data.join_truncated(prompt_ids, completion_ids, max_length, truncation="keep_start")
    assert trl == (prompt_ids + completion_ids)[:max_length] and tokenizer.eos_token_id not in trl
