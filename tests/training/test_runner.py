"""training.runner: the engine's command line, and a run's process from start to end.

The training subprocess crashes: the run fails with the error shown, and nothing else changes.

The runner enforces the run's time limit itself: the process group is killed, the run fails.

LoRA runs: the candidate is an adapter over the weights it was trained from, and a run based
on an adapter version first merges it into full weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from feedback.models import DatasetSnapshot
from projects.selectors import default_project
from tests.helpers import wait_for
from tests.training.helpers import run_dirs, run_status
from training import registry, runs
from training.kto.cli import build_parser
from training.models import ModelVersion, TrainingRun
from training.policy import CONFIG_FIELDS, GATE_FIELDS, resolve_training_config
from training.processes import process_alive
from training.runner import build_train_command, execute_run
from training.runs import class_weights_for
from training.selectors import active_version

REPO_ROOT = Path(__file__).resolve().parents[2]

# --- training crash ----------------------------------------


@pytest.mark.slow
def test_engine_crash_fails_the_run_and_changes_nothing_else(demo_loop, start_worker, loop_redis, data_dir, tmp_path):
    # A "model" directory with no weights in it: the engine cannot load it and exits non-zero.
    broken_dir = tmp_path / "not-a-model"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_text('{"model_type": "no-such-architecture"}')
    broken = ModelVersion.objects.create(
        project=default_project(), name="broken", base_model=str(broken_dir), artifact_path=str(broken_dir)
    )
    versions_before = set(ModelVersion.objects.values_list("pk", "status"))
    worker = start_worker("gpu")

    run = runs.start_run(base_version=broken)
    snapshot_sha = hashlib.sha256(Path(run.snapshot.path).read_bytes()).hexdigest()
    wait_for(lambda: run_status(run.pk) not in ("queued", "running"), 240, "the run to end", on_timeout=worker.log)

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED, run.error
    assert run.exit_code not in (None, 0)
    assert run.error.startswith(f"training exited with code {run.exit_code}")
    # The engine's own message (its stderr tail) is what the admin sees.
    assert "no-such-architecture" in run.error or "not-a-model" in run.error, run.error
    assert len(run_dirs(data_dir, run.pk)) == 1
    # Nothing else changed: no new version, the same active version, the snapshot file untouched.
    assert set(ModelVersion.objects.values_list("pk", "status")) == versions_before
    assert active_version() == demo_loop
    assert hashlib.sha256(Path(run.snapshot.path).read_bytes()).hexdigest() == snapshot_sha == run.snapshot.sha256


# --- run time limit ----------------------------------------


@pytest.mark.slow
def test_run_over_its_time_limit_is_killed_and_failed(demo_loop, loop_redis, settings):
    settings.PROSPECT_RUN_POLL_SECONDS = 0.5
    run = runs.start_run(config={"max_steps": 10_000, "time_limit_seconds": 1})

    # This test process plays the gpu worker (the task body is exactly this call).
    assert execute_run(run.pk) is None

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "time limit of 1s exceeded" in run.error
    assert run.exit_code is not None and run.exit_code != 0
    assert not process_alive(run.process_group_id)
    assert active_version() == demo_loop and not ModelVersion.objects.filter(created_by_run=run).exists()


# --- lora runs ----------------------------------------


@pytest.mark.slow
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


# --- the engine's command line ----------------------------------------
# Each policy field either becomes one of the engine's options (checked through the engine's own
# argument parser) or reaches training another way, named here. A new field must be added to one.
ENGINE_OPTIONS = {
    # policy field: (a value other than any default, the engine's parsed attribute)
    "beta": (0.37, "beta"),
    "learning_rate": (3.3e-5, "learning_rate"),
    "num_train_epochs": (2.5, "num_train_epochs"),
    "max_steps": (17, "max_steps"),
    "per_device_train_batch_size": (6, "per_device_train_batch_size"),
    "gradient_accumulation_steps": (3, "gradient_accumulation_steps"),
    "max_length": (77, "max_length"),
    "loss": ("concave", "loss"),
    "seed": (123, "seed"),
    "lora": (True, "lora"),
}
REACHES_TRAINING_ELSEWHERE = {
    "base_model": "the first active version, whose weights are --model",
    "lambda_mode": "λ chosen when the run is created, passed as --desirable-weight / --undesirable-weight",
    "target_ratio": "λ chosen when the snapshot is cut",
    "desirable_weight": "λ (manual), passed as --desirable-weight",
    "undesirable_weight": "λ (manual), passed as --undesirable-weight",
    "holdout": "the snapshot's train/holdout split, the --data file",
    **{name: "the evaluation gate" for name in GATE_FIELDS},
    "time_limit_seconds": "the runner's supervisor kills the process group",
}


def test_every_policy_field_is_accounted_for():
    assert set(CONFIG_FIELDS) == set(ENGINE_OPTIONS) | set(REACHES_TRAINING_ELSEWHERE)


@pytest.mark.django_db
@pytest.mark.parametrize("launcher", ["python", "accelerate"])
def test_every_policy_field_reaches_the_engines_command_line(settings, tmp_path, launcher):
    settings.PROSPECT_TRAIN_LAUNCHER = launcher
    config = resolve_training_config(
        {
            **{name: value for name, (value, _) in ENGINE_OPTIONS.items()},
            "lambda_mode": "manual",
            "desirable_weight": 1.7,
            "undesirable_weight": 0.9,
        }
    )
    snapshot = DatasetSnapshot.objects.create(
        project=default_project(), path="unused", sha256="0" * 64, desirable_weight=2.0, weight_rule="auto"
    )
    weights = class_weights_for(snapshot, config)
    run = TrainingRun.objects.create(
        project=default_project(),
        snapshot=snapshot,
        config=config,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
    )

    command = build_train_command(run, model="/models/m", data=tmp_path / "train.jsonl", out=tmp_path / "out")

    engine_args = command[command.index("training.kto") + 1 :]
    parsed = build_parser().parse_args(engine_args)
    assert parsed.command == "train"
    for name, (value, attribute) in ENGINE_OPTIONS.items():
        assert getattr(parsed, attribute) == value, name
    assert (parsed.desirable_weight, parsed.undesirable_weight) == (1.7, 0.9)
    assert (parsed.model, parsed.data, parsed.out) == (
        "/models/m",
        str(tmp_path / "train.jsonl"),
        str(tmp_path / "out"),
    )


@pytest.mark.django_db
@pytest.mark.parametrize("checkpointing", ["auto", "off", "elementwise", "layer"])
def test_the_workers_checkpointing_setting_reaches_the_engine(settings, tmp_path, checkpointing):
    """PROSPECT_TRAIN_CHECKPOINTING is the worker's (its GPU's memory), not the project's policy."""
    settings.PROSPECT_TRAIN_CHECKPOINTING = checkpointing
    snapshot = DatasetSnapshot.objects.create(
        project=default_project(), path="unused", sha256="0" * 64, desirable_weight=1.0, weight_rule="auto"
    )
    run = TrainingRun.objects.create(
        project=default_project(),
        snapshot=snapshot,
        config=resolve_training_config({}),
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    command = build_train_command(run, model="/models/m", data=tmp_path / "train.jsonl", out=tmp_path / "out")
    parsed = build_parser().parse_args(command[command.index("training.kto") + 1 :])
    assert parsed.gradient_checkpointing == (checkpointing != "off")
    if checkpointing != "off":
        assert parsed.checkpoint_policy == checkpointing


def test_an_unknown_checkpointing_setting_is_refused_when_the_settings_load():
    env = dict(os.environ, PROSPECT_TRAIN_CHECKPOINTING="half")
    loaded = subprocess.run(
        [sys.executable, "-c", "import config.settings"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert loaded.returncode != 0
    assert "PROSPECT_TRAIN_CHECKPOINTING='half': use auto, off, layer, elementwise" in loaded.stderr
