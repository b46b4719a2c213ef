"""Two processes (accelerate launch, gloo on CPU) against one process on the combined batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.kto.helpers import run_launch
from training.kto.distributed import free_port

SCRIPT = Path(__file__).with_name("distributed_check.py")


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_combined_batch(demo_model_dir, feedback_jsonl, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    two, one = tmp_path / "two.pt", tmp_path / "one.pt"
    # Without CUDA, `--multi_gpu --num_processes 2` is what starts two torchrun workers (`--cpu`
    # would start a single process); Accelerator(cpu=True) then makes them a gloo group.
    run_launch(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(SCRIPT),
            demo_model_dir,
            feedback_jsonl,
            str(two),
        ]
    )
    run_launch([sys.executable, str(SCRIPT), demo_model_dir, feedback_jsonl, str(one)])
    distributed, single = torch.load(two, weights_only=True), torch.load(one, weights_only=True)
    assert distributed["world"] == 2 and single["world"] == 1
    # Every process used the same z0: the all-reduced one, equal to the combined batch's.
    assert distributed["z0"][0] == distributed["z0"][1]
    assert distributed["z0"][0] == pytest.approx(single["z0"][0], abs=1e-6)
    assert distributed["z0_raw"] == pytest.approx(single["z0_raw"], abs=1e-6)
    assert abs(single["z0_raw"]) > 1e-3  # a real reference point, not a trivial 0
    assert distributed["loss"] == pytest.approx(single["loss"], abs=1e-6)
    largest = max(float(update.abs().max()) for update in single["update"].values())
    assert largest > 0
    for name, update in single["update"].items():
        torch.testing.assert_close(distributed["update"][name], update, rtol=1e-4, atol=1e-7 * max(1.0, largest))


@pytest.mark.slow
def test_train_cli_runs_data_parallel_under_accelerate_launch(demo_model_dir, feedback_jsonl, tmp_path):
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    out = tmp_path / "ddp"
    result = run_launch(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            "-m",
            "training.kto",
            "train",
            "--model",
            demo_model_dir,
            "--data",
            feedback_jsonl,
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--save-steps",
            "2",
            "--per-device-train-batch-size",
            "4",
            "--gradient-accumulation-steps",
            "2",
            "--max-length",
            "32",
            "--learning-rate",
            "1e-4",
            "--no-progress",
            # Each process measures; all take the smallest memory limit, so they choose alike.
            "--checkpoint-policy",
            "auto",
        ]
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1  # only the main process reports

    summary = json.loads(lines[0])
    assert summary["steps"] == 3
    assert summary["memory_plan"]["policy"] == summary["speed_levers"]["checkpointing"] == "off"  # a tiny model
    assert (out / "final" / "model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoints" / "step-2").glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}
    assert json.loads((out / "config.json").read_text())["world_size"] == 2

    # Issue 7 problem 6: this 2-process run resumed on 1 process used to continue with a changed plan.
    resumed = run_launch(
        [
            sys.executable,
            "-m",
            "training.kto",
            "train",
            "--model",
            demo_model_dir,
            "--data",
            feedback_jsonl,
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--save-steps",
            "2",
            "--per-device-train-batch-size",
            "4",
            "--gradient-accumulation-steps",
            "2",
            "--max-length",
            "32",
            "--learning-rate",
            "1e-4",
            "--no-progress",
            "--resume",
        ],
        check=False,
    )
    assert resumed.returncode == 2
    assert "number of processes: was 2, now 1" in resumed.stderr
