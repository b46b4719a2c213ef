"""`manage.py simulate_annotators`: votes through the feedback services, a run, the gate, a JSON summary."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from feedback.models import DatasetSnapshot, Vote
from training.kto.demo import demo_accuracy, demo_prompts, simulated_annotator
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def inline_settings(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.PROSPECT_TRAIN_LAUNCHER = "python"  # the same engine, without accelerate's start-up
    return settings


def test_one_round_votes_trains_gates_and_reports(inline_settings, active_demo_version):
    out = io.StringIO()
    call_command(
        "simulate_annotators",
        "--rounds",
        "1",
        "--prompts-per-round",
        "12",
        "--samples-per-prompt",
        "2",
        "--eval-prompts",
        "40",
        "--judge-prompts",
        "20",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--inline",
        stdout=out,
    )
    lines = out.getvalue().strip().splitlines()
    summary = json.loads(lines[-1])

    # Every vote is the simulated annotator's verdict on a stored generation of the active model.
    votes = Vote.objects.select_related("generation__prompt")
    assert votes.exists()
    for vote in votes:
        assert vote.external_user_id == "simulated-annotator"
        assert vote.desirable == simulated_annotator(vote.generation.prompt.content, vote.generation.completion)
        assert vote.generation.model_version == active_demo_version
    assert DatasetSnapshot.objects.count() == 1

    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.config["max_steps"] == 2
    candidate = ModelVersion.objects.get(created_by_run=run)
    assert candidate.evaluation_state == ModelVersion.EvaluationState.DONE
    assert "demo_accuracy" in candidate.metrics  # the gate judged it with the simulated annotator

    active = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    assert summary["runs"] == [run.pk]
    assert summary["active_version"] == active.name
    assert summary["baseline_accuracy"] == round(
        demo_accuracy(active_demo_version.artifact_path, demo_prompts(40, split="heldout")), 4
    )
    assert summary["accuracy_by_round"] == [
        round(demo_accuracy(active.artifact_path, demo_prompts(40, split="heldout")), 4)
    ]
    assert lines[-2].startswith("round 1: ")


def test_zero_rounds_is_refused(inline_settings, active_demo_version):
    with pytest.raises(CommandError, match="--rounds"):
        call_command("simulate_annotators", "--rounds", "0", "--inline", stdout=io.StringIO())
    assert TrainingRun.objects.count() == 0
