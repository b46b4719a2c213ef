"""Every loss in loss.VARIANTS trains for a few steps through the real trainer, and the table is
the one list the CLI, the training policy and the docs use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.kto.helpers import metrics_of
from training.kto import loss as kto_loss
from training.kto.trainer import TrainConfig, train

REPO_ROOT = Path(__file__).resolve().parents[2]


def few_steps(model: str, data: str, out: Path, loss: str, **overrides) -> dict:
    options = dict(
        model=model,
        data=data,
        out=str(out),
        loss=loss,
        learning_rate=1e-4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        num_train_epochs=1,
        max_steps=3,
        max_length=32,
        logging_steps=1,
        save_steps=0,
        gradient_checkpointing=False,
        progress=False,
    )
    options.update(overrides)
    return train(TrainConfig(**options))


@pytest.mark.parametrize("loss", kto_loss.LOSS_TYPES)
def test_every_loss_trains_a_few_steps(loss, demo_model_dir, feedback_jsonl, tmp_path):
    summary = few_steps(demo_model_dir, feedback_jsonl, tmp_path / loss, loss)
    variant = kto_loss.VARIANTS[loss]
    records = metrics_of(tmp_path / loss)
    assert [record["step"] for record in records] == [1, 2, 3]
    assert all(math.isfinite(record["loss"]) and record["grad_norm"] > 0 for record in records)
    assert summary["reference"] == (
        "none" if not variant.needs_reference else "copy" if variant.token_level else "precompute"
    )
    if variant.needs_reference:
        # Step 1: the policy is the reference, so every implied reward is 0 (and DPO's loss is log 2).
        assert records[0]["reward_desirable"] == pytest.approx(0.0, abs=1e-5)
        assert records[0]["reward_undesirable"] == pytest.approx(0.0, abs=1e-5)
    if variant.needs_mismatched:  # a real reference point once the policy has moved
        assert records[-1]["z0_raw"] != 0.0
    else:
        assert all(record["z0"] == 0.0 for record in records)
    weights = load_file(Path(summary["final"]) / "model.safetensors")
    original = load_file(Path(demo_model_dir) / "model.safetensors")
    assert any(not torch.equal(weights[name], original[name]) for name in original)  # it trained


def test_losses_at_the_reference_take_their_textbook_values(demo_model_dir, feedback_jsonl, tmp_path):
    at_start = {
        loss: metrics_of(tmp_path / loss)[0]["loss"]
        for loss in ("kto", "dpo", "ppo_offline")
        if few_steps(demo_model_dir, feedback_jsonl, tmp_path / loss, loss, max_steps=1)
    }
    assert at_start["dpo"] == pytest.approx(math.log(2), abs=1e-5)  # −log σ(0)
    # KTO at r = 0: λ − λσ(−β z0) with z0 = max(0, 0) = 0 at step 1 → 1 − σ(0) = 0.5 (λ_D = λ_U = 1).
    assert at_start["kto"] == pytest.approx(0.5, abs=1e-5)
    # PPO at q = 1: −mean_t A_t, in [−1, 1], and not 0 unless the classes' tokens balance exactly.
    assert -1.0 <= at_start["ppo_offline"] <= 1.0


def test_csft_records_its_control_tokens_and_generation_appends_the_desirable_one(
    demo_model_dir, feedback_jsonl, tmp_path
):
    from training.kto.generation import generate_completions, load_for_generation

    summary = few_steps(demo_model_dir, feedback_jsonl, tmp_path / "csft", "csft")
    record = json.loads((Path(summary["final"]) / "prospect_training.json").read_text())
    assert record["control_tokens"] == {"desirable": "<|good|>", "undesirable": "<|bad|>"}
    model, tokenizer = load_for_generation(summary["final"])
    good = tokenizer.convert_tokens_to_ids("<|good|>")
    assert tokenizer.prospect_prompt_suffix_ids == [good] and good != tokenizer.unk_token_id
    # The generated answer is the model's continuation after "<prompt><|good|>".
    prompt = "What is 12+3?"
    ids = tokenizer(prompt)["input_ids"] + [good]
    expected = model.generate(
        input_ids=torch.tensor([ids]),
        max_new_tokens=4,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    expected_text = tokenizer.decode(expected[0, len(ids) :], skip_special_tokens=True)
    assert generate_completions((model, tokenizer), [prompt], max_new_tokens=4) == [expected_text]


def test_the_variant_table_is_the_one_list():
    from training.kto.cli import build_parser

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    loss_action = next(action for action in train_parser._actions if action.dest == "loss")
    assert tuple(loss_action.choices) == kto_loss.LOSS_TYPES
    interface = (REPO_ROOT / "training" / "kto" / "INTERFACE.md").read_text()
    for name in kto_loss.LOSS_TYPES:
        assert f"`{name}`" in interface, name
