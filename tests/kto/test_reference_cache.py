"""The reference log-prob cache cannot be stale: entries are keyed by the exact token ids they
score, the file by the reference's identity (model, adapter, precision, engine code)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.kto.helpers import FAST, private_copy, train, train_here
from training.kto import data as kto_data
from training.kto.trainer import sequence_keys


def test_kto_then_dpo_on_the_same_file_starts_dpo_at_log_2(demo_model_dir, feedback_jsonl, tmp_path):
    """Issue 7 problem 1: the cache was keyed by example indices, which name different rows for
    KTO and DPO, so DPO after KTO trained against wrong reference log-probs."""
    data = private_copy(feedback_jsonl, tmp_path / "data")
    kto = train_here(demo_model_dir, data, tmp_path / "kto", "--max-steps", "3").summary
    dpo = train_here(demo_model_dir, data, tmp_path / "dpo", "--max-steps", "1", "--loss", "dpo")
    assert kto["reference_cache"]["path"] == dpo.summary["reference_cache"]["path"]  # the same reference, one file
    assert dpo.summary["reference_cache"]["computed"] > 0  # DPO's sequences were not taken for KTO's rows
    first = dpo.metrics[0]
    # At step 1 the policy is the reference: every margin is 0 and the DPO loss is −log σ(0) = log 2.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)


def test_an_fp32_run_after_a_bf16_run_recomputes(demo_model_dir, feedback_jsonl, tmp_path, run_cli):
    data = private_copy(feedback_jsonl, tmp_path / "data")
    bf16 = train(run_cli, demo_model_dir, data, tmp_path / "bf16", "--max-steps", "1", "--bf16", "yes").summary
    fp32_run = train(run_cli, demo_model_dir, data, tmp_path / "fp32", "--max-steps", "1", "--bf16", "no")
    fp32 = fp32_run.summary
    assert fp32["reference_cache"]["path"] != bf16["reference_cache"]["path"]
    assert fp32["reference_cache"]["hits"] == 0 and fp32["reference_cache"]["computed"] > 0
    first = fp32_run.metrics[0]
    # fp32 policy against an fp32 reference: r = 0 at step 1 (a bf16 reference gave r ≈ 0.004).
    assert first["reward_desirable"] == pytest.approx(0.0, abs=1e-5)
    assert first["reward_undesirable"] == pytest.approx(0.0, abs=1e-5)
    again = train(run_cli, demo_model_dir, data, tmp_path / "again", "--max-steps", "1", "--bf16", "no").summary
    assert again["reference_cache"]["computed"] == 0 and again["reference_cache"]["hits"] > 0


def test_sequence_keys_follow_the_scored_tokens_not_the_row():
    same_tokens_other_split = kto_data.collate([((5, 6, 7), (8, 9)), ((5, 6), (7, 8, 9))], 16, 0)
    keys = sequence_keys(same_tokens_other_split)
    assert keys[0] != keys[1]  # the same ids, but different tokens are scored
    padded = kto_data.collate([((5, 6, 7), (8, 9)), ((1, 2, 3, 4, 5, 6), (7, 8))], 16, 0)
    alone = kto_data.collate([((5, 6, 7), (8, 9))], 16, 0)
    alone["attention_mask"] = None  # no padding: the trainer drops the mask
    assert sequence_keys(padded)[0] == sequence_keys(alone)[0]  # padding is not part of the key
    # Keys are taken after truncation: what the model reads is what is keyed.
    truncated = kto_data.collate([((1, 2, 5, 6, 7), (8, 9))], 5, 0)
    truncated["attention_mask"] = None
    assert sequence_keys(truncated)[0] == sequence_keys(alone)[0]


def test_cache_and_checkpoint_files_are_read_without_unpickling_code(demo_model_dir, feedback_jsonl, tmp_path, run_cli):
    """Issue 7 problem 8: torch.load(weights_only=False) would run code hidden in a checkpoint."""
    marker = tmp_path / "payload-ran"
    out = tmp_path / "run"
    run_cli(
        "train",
        "--model",
        demo_model_dir,
        "--data",
        feedback_jsonl,
        "--out",
        str(out),
        *FAST,
        "--max-steps",
        "4",
        "--save-steps",
        "2",
    )
    torch.save(_Payload(str(marker)), out / "checkpoints" / "step-2" / "optimizer.pt")
    result = run_cli(
        "train",
        "--model",
        demo_model_dir,
        "--data",
        feedback_jsonl,
        "--out",
        str(out),
        *FAST,
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        "--resume",
        check=False,
    )
    assert not marker.exists()
    assert result.returncode == 2 and "optimizer.pt" in result.stderr and "refused" in result.stderr


class _Payload:
    """Unpickling this object creates a file: what a malicious checkpoint could do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.path),)
