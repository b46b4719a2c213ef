"""Non-finite guard: a step whose loss or gradient norm is not finite is skipped (logged and
counted), K in a row abort the run with a clear error, and non-finite weights are never written.

NaN enters through the real data path: the precomputed reference log-probs of some sequences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.kto.helpers import FAST, metrics_of, private_copy, summary_of, train_here


def poison_reference_cache(path: str, how_many: int | None) -> None:
    """Set the cached reference log-prob of `how_many` sequences (None: all) to NaN."""
    stored = torch.load(path, weights_only=True)
    keys = sorted(stored["logps"])
    for key in keys if how_many is None else keys[:how_many]:
        stored["logps"][key] = float("nan")
    torch.save(stored, path)


def test_a_nan_batch_is_skipped_and_the_run_ends_with_finite_weights(demo_model_dir, feedback_jsonl, tmp_path, run_cli):
    data = private_copy(feedback_jsonl, tmp_path / "data")
    options = ["--model", demo_model_dir, "--data", data, *FAST, "--max-steps", "6"]
    clean = train_here(demo_model_dir, data, tmp_path / "clean", "--max-steps", "6").summary
    poison_reference_cache(clean["reference_cache"]["path"], how_many=1)

    result = run_cli("train", *options, "--out", str(tmp_path / "poisoned"))
    summary = summary_of(result)
    assert summary["reference_cache"]["computed"] == 0  # it did read the poisoned entry
    assert summary["skipped_steps"] == 1
    assert "non-finite loss" in result.stderr and "update skipped" in result.stderr
    records = metrics_of(tmp_path / "poisoned")
    assert records[-1]["skipped_steps"] == 1
    assert all(record["loss"] is None or math.isfinite(record["loss"]) for record in records)
    weights = load_file(tmp_path / "poisoned" / "final" / "model.safetensors")
    assert all(bool(torch.isfinite(tensor).all()) for tensor in weights.values())


def test_k_nonfinite_steps_in_a_row_abort_without_writing_a_model(demo_model_dir, feedback_jsonl, tmp_path, run_cli):
    data = private_copy(feedback_jsonl, tmp_path / "data")
    options = ["--model", demo_model_dir, "--data", data, *FAST, "--max-steps", "8"]
    clean = train_here(demo_model_dir, data, tmp_path / "clean", "--max-steps", "8").summary
    poison_reference_cache(clean["reference_cache"]["path"], how_many=None)

    out = tmp_path / "poisoned"
    result = run_cli(
        "train", *options, "--out", str(out), "--max-nonfinite-steps", "3", "--save-steps", "2", check=False
    )
    assert result.returncode == 3 and result.stdout == ""
    assert "3 optimizer steps in a row (up to step 3)" in result.stderr
    assert not (out / "final").exists()
    # The skipped steps never touched the weights: the checkpoint at step 2 holds the initial model.
    saved = load_file(out / "checkpoints" / "step-2" / "model.safetensors")
    initial = load_file(Path(demo_model_dir) / "model.safetensors")
    assert all(torch.equal(saved[name], initial[name]) for name in initial)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": 3, "skipped_steps": 3, "aborted": "non-finite"}
