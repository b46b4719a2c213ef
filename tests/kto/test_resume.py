"""--resume continues only the same training: the same options, number of processes, precision,
data contents and model. Anything else is refused, naming the difference, and changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.kto.helpers import FAST, private_copy, train_here

SHORT = [*FAST, "--max-steps", "2"]


def tree_state(directory: Path) -> dict:
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in directory.rglob("*")}


@pytest.fixture
def finished_run(demo_model_dir, feedback_jsonl, tmp_path):
    """A completed 2-step run on private copies of the model and the data (so they can be changed).
    Trained in this process (the same command line); the resumes under test run as their own processes."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    data = private_copy(feedback_jsonl, tmp_path / "data")
    out = tmp_path / "run"
    options = ["--model", str(model), "--data", data, "--out", str(out), *SHORT]
    train_here(str(model), data, out, *SHORT, "--bf16", "no", fast=False)
    identity = json.loads((out / "config.json").read_text())["run_identity"]
    assert identity["world_size"] == 1 and identity["precision"] == "fp32"
    return model, data, out, options


def resume_refused(run_cli, options, out, *extra) -> str:
    before = tree_state(out)
    result = run_cli("train", *options, *extra, "--resume", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert tree_state(out) == before  # nothing written
    return result.stderr


def test_resume_refuses_changed_data(finished_run, run_cli):
    model, data, out, options = finished_run
    with open(data, "a") as handle:
        handle.write('{"prompt": "What is 1+1?", "completion": "2", "label": true}\n')
    assert "data file contents" in resume_refused(run_cli, options, out, "--bf16", "no")


def test_resume_refuses_changed_model_weights(finished_run, run_cli):
    import torch
    from safetensors.torch import load_file, save_file

    model, data, out, options = finished_run
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.full_like(weights[name], 1e-3)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    assert "model weights" in resume_refused(run_cli, options, out, "--bf16", "no")


def test_resume_refuses_another_precision(finished_run, run_cli):
    model, data, out, options = finished_run
    stderr = resume_refused(run_cli, options, out, "--bf16", "yes")
    assert "precision: was fp32, now bf16" in stderr


def test_resume_with_the_same_everything_is_accepted(finished_run, run_cli):
    model, data, out, options = finished_run
    result = run_cli("train", *options, "--bf16", "no", "--resume")
    assert json.loads(result.stdout)["steps"] == 2
