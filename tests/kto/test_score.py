"""`python -m training.kto score`: per row, the completion log-prob the loss uses, checked against the
model's own forward."""

from __future__ import annotations

import json

import pytest
import torch

from training.kto.modeling import load_causal_lm, load_tokenizer

ROWS = [
    {"prompt": "Answer: ", "completion": "yes", "label": True},
    {
        "prompt": [{"role": "user", "content": "What is 2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}],
        "label": False,
    },
    {"prompt": "The quick brown fox jumps over the lazy dog. " * 3, "completion": " Hello, how are you today?"},
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it true?"}],
        "completion": "No, it is not.",
        "label": True,
    },
]


def forward_logp(model, tokenizer, row) -> tuple[float, int]:
    """The model's own forward on the row as TRL would build it: sum over completion tokens."""
    if isinstance(row["prompt"], list):
        completion = (
            row["completion"]
            if isinstance(row["completion"], list)
            else [{"role": "assistant", "content": row["completion"]}]
        )
        prompt_ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        full_ids = tokenizer.apply_chat_template(row["prompt"] + completion, return_dict=True)["input_ids"]
    else:
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        full_ids = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
    split = next(i for i, (a, b) in enumerate(zip(prompt_ids + [None], full_ids)) if a != b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full_ids])).logits[0]
    logps = torch.log_softmax(logits[:-1].float(), -1).gather(-1, torch.tensor(full_ids[1:])[:, None]).squeeze(-1)
    return logps[split - 1 :].sum().item(), len(full_ids) - split


def test_score_equals_the_models_forward(family_model_dir, tmp_path, run_cli):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "scores.jsonl"
    result = run_cli("score", "--model", family_model_dir, "--data", str(data), "--out", str(out), "--batch-size", "3")
    summary = json.loads(result.stdout)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["n_rows"] == len(ROWS)

    model, tokenizer = load_causal_lm(family_model_dir).eval(), load_tokenizer(family_model_dir)
    for line, row in zip(lines, ROWS):  # in input order, although scored in length-sorted batches
        expected_logp, expected_tokens = forward_logp(model, tokenizer, row)
        assert line["n_tokens"] == expected_tokens
        assert line["logp"] == pytest.approx(expected_logp, abs=1e-4)


def test_score_truncates_as_training_does(bpe_model_dir, tmp_path, run_cli):
    """--max-length: the engine keeps the completion (prompt trimmed from the left); --trl-compat cuts its end."""
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROWS[2]) + "\n")
    scores = {}
    for name, extra in (
        ("full", []),
        ("engine", ["--max-length", "12"]),
        ("trl", ["--max-length", "12", "--trl-compat"]),
    ):
        out = tmp_path / f"{name}.jsonl"
        run_cli("score", "--model", bpe_model_dir, "--data", str(data), "--out", str(out), *extra)
        scores[name] = json.loads(out.read_text())
    assert scores["engine"]["n_tokens"] == scores["full"]["n_tokens"] < 12
    assert scores["engine"]["logp"] != pytest.approx(scores["full"]["logp"], abs=1e-4)  # less prompt context
    assert scores["trl"]["n_tokens"] == 0  # this prompt alone fills 12 tokens: TRL would drop the row


def test_score_rejects_a_bad_row_and_writes_nothing(bpe_model_dir, tmp_path, run_cli):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    out = tmp_path / "scores.jsonl"
    result = run_cli("score", "--model", bpe_model_dir, "--data", str(data), "--out", str(out), check=False)
    assert result.returncode == 2 and f"{data}:2: missing field 'completion'" in result.stderr
    assert not out.exists()
