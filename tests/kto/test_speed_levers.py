"""The engine's speed levers (token-budget calls, padding-free packing, the chunked LM head, fused
AdamW) change how sequences are grouped and computed, never the numbers: per-step losses, z0 and
gradient norms match the unoptimised path (one padded call per microbatch, whole head, for-loop
AdamW) to 1e-5 in fp32 on CPU, on both real tokenizer families."""

from __future__ import annotations

import json
import random

import pytest
import torch

from tests.kto.helpers import metrics_of
from training.kto import data as kto_data
from training.kto.trainer import TrainConfig, call_groups, grad_units, host_microbatch, train

UNOPTIMISED = dict(token_budget=0, packing=False, logits_chunk_size=0, optimizer_impl="for-loop")
# A small budget and chunk so that every lever is really exercised on this tiny data: several
# microbatches per call, several sequences per packed row, several head chunks per call.
OPTIMISED = dict(token_budget=160, packing=True, logits_chunk_size=5, optimizer_impl="fused")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared, busy 2-core machine two threads spend most of their time
    waiting for each other on these tiny matmuls (the results do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_rows(path, n: int, seed: int = 0, prompt_words=(2, 14), completion_words=(1, 9), prefix: str = "") -> str:
    rng = random.Random(seed)
    words = "the cat a robot reads writes the answer yes no what is 12+3 ? sure here is a short story".split()

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high)))

    path.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": prefix + text(*prompt_words),
                    "completion": " " + text(*completion_words),
                    "label": rng.random() < 0.5,
                }
            )
            + "\n"
            for _ in range(n)
        )
    )
    return str(path)


def _run(model_dir: str, data: str, out, **options) -> list[dict]:
    _train(model_dir, data, out, **options)
    return metrics_of(out)


def _train(model_dir: str, data: str, out, **options) -> dict:
    """One small run (3 optimizer steps of 12 examples for 36 rows); returns the run's summary."""
    return train(
        TrainConfig(
            model=model_dir,
            data=data,
            out=str(out),
            per_device_train_batch_size=4,
            gradient_accumulation_steps=3,
            num_train_epochs=1,
            learning_rate=1e-3,  # large, so later steps depend on exact earlier gradients
            logging_steps=1,
            progress=False,
            seed=3,
            **{"gradient_checkpointing": False, **options},
        )
    )


@pytest.mark.parametrize(
    "family, setup",
    [("bpe", "full_precompute"), ("sentencepiece", "full_precompute"), ("bpe", "lora_live_reference")],
)
def test_optimised_path_matches_unoptimised_losses(request, tmp_path, family, setup):
    model_dir = request.getfixturevalue(f"{family}_model_dir")
    data = _write_rows(tmp_path / "data.jsonl", 36)
    extra = dict(lora=True, reference="copy") if setup == "lora_live_reference" else {}
    plain = _run(model_dir, data, tmp_path / "plain", **UNOPTIMISED, **extra)
    fast = _run(model_dir, data, tmp_path / "fast", **OPTIMISED, **extra)
    assert len(plain) == len(fast) == 3
    for slow_step, fast_step in zip(plain, fast):
        for key in ("loss", "z0_raw", "grad_norm", "reward_margin"):
            assert fast_step[key] == pytest.approx(slow_step[key], abs=1e-5), (slow_step["step"], key)
    # The weights moved, so steps 2-3 test the gradients, not just the first forward.
    assert plain[-1]["loss"] != pytest.approx(plain[0]["loss"], abs=1e-4)


def test_pack_puts_sequences_side_by_side_with_restarting_positions():
    joined = [([1, 2, 3, 4, 5, 6], 2), ([7, 8, 9], 1), ([10, 11], 1), ([12], 0)]
    packed = kto_data.pack(joined, pad_token_id=0)
    assert packed["attention_mask"] is None
    assert packed["input_ids"].shape == (2, 6)  # 12 tokens in 2 rows of the longest's width, not 4 rows
    assert packed["input_ids"][1].tolist() == [7, 8, 9, 10, 11, 12]
    assert packed["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 0]
    assert packed["sequence_ids"][1].tolist() == [1, 1, 1, 2, 2, 3]
    assert packed["completion_mask"][1].tolist() == [False, True, True, False, True, True]


def test_calls_respect_the_token_budget_and_keep_microbatches_whole(tmp_path):
    lengths = [50, 10, 40, 30, 20]
    groups = call_groups(lengths, budget=60, packing=True)
    assert sorted(i for group in groups for i in group) == list(range(5))
    assert all(sum(lengths[i] for i in group) <= 60 for group in groups)
    assert call_groups(lengths, budget=60, packing=False) == [[0], [2], [3, 4], [1]]  # rows × longest
    examples = [kto_data.TokenizedExample(tuple(range(1, 9)), (9, 10), i % 2 == 0) for i in range(8)]
    config = TrainConfig(model="m", data="d", out="o", per_device_train_batch_size=2, max_length=64)
    microbatches = [host_microbatch(examples, [2 * k, 2 * k + 1], config, None) for k in range(4)]
    assert grad_units(microbatches, budget=40, packing=True) == [[0, 1], [2, 3]]  # 20 tokens each
    assert grad_units(microbatches, budget=0, packing=True) == [[0], [1], [2], [3]]
    assert torch.equal(microbatches[0].is_desirable, torch.tensor([True, False]))
