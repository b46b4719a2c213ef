"""Dropout is off in policy and reference by default (TRL's disable_dropout): at step 1 the policy
is the reference, so every implied reward is exactly 0."""

from __future__ import annotations

import pytest

from tests.kto.helpers import train_here


@pytest.fixture(scope="module")
def dropout_model_dir(demo_model_dir, tmp_path_factory) -> str:
    """A tiny random GPT-2 (dropout on embeddings, attention and residuals) on the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.3,
        embd_pdrop=0.3,
        attn_pdrop=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("gpt2-dropout")
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize("reference", ["precompute", "copy"])
def test_rewards_are_zero_at_step_one_with_a_dropout_model(dropout_model_dir, feedback_jsonl, tmp_path, reference):
    common = ["--max-steps", "1", "--reference", reference]
    first = train_here(dropout_model_dir, feedback_jsonl, tmp_path / "default", *common).metrics[0]
    assert first["reward_desirable"] == pytest.approx(0.0, abs=1e-5)
    assert first["reward_undesirable"] == pytest.approx(0.0, abs=1e-5)
    assert first["z0_raw"] == pytest.approx(0.0, abs=1e-5)
    # The opt-out keeps it, and then the rewards carry dropout noise: the check above can fail.
    noisy = train_here(dropout_model_dir, feedback_jsonl, tmp_path / "kept", *common, "--keep-dropout").metrics[0]
    assert abs(noisy["reward_desirable"]) + abs(noisy["reward_undesirable"]) > 1e-2
