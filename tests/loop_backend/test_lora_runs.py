"""LoRA runs: the candidate is an adapter over the weights it was trained from, and a run based
on an adapter version first merges it into full weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import registry, runs
from training.models import TrainingRun
from training.runner import execute_run

pytestmark = pytest.mark.slow


def test_adapter_versions_chain(demo_loop, loop_redis, demo_model_dir):
    # This test process plays the gpu worker (the task body is exactly execute_run).
    first = execute_run(runs.start_run(config={"lora": True}).pk)

    assert first is not None and first.is_adapter and first.base_model == demo_model_dir
    assert json.loads((Path(first.artifact_path) / "adapter_config.json").read_text())
    registry.promote(first)

    second = execute_run(runs.start_run(config={"lora": True}).pk)

    run = TrainingRun.objects.get(pk=second.created_by_run_id)
    merged = Path(run.artifact_dir) / "base-merged"
    assert run.status == TrainingRun.Status.SUCCEEDED and run.base_version == first
    assert second.is_adapter and second.base_model == str(merged) and (merged / "config.json").is_file()
    assert second.parent == first
