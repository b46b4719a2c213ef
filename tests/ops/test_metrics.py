"""/metrics reads the loop's state: votes, queue depth, runs and their durations, the active version."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from feedback.models import DatasetSnapshot
from projects.selectors import default_project
from tests.feedback.helpers import add_generation, make_annotator
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


def test_metrics_count_votes_queue_runs_and_the_active_version(client, settings, tmp_path):
    settings.PROSPECT_METRICS_TOKEN = ""
    from feedback.services.votes import record_vote

    rated, _unrated = add_generation(prompt="a", completion="b"), add_generation(prompt="c", completion="d")
    record_vote(generation_id=rated.pk, desirable=False, annotator_id=make_annotator("alice").pk)
    snapshot = DatasetSnapshot.objects.create(project=default_project(), path="/nonexistent", sha256="0" * 64)
    start = timezone.now() - timedelta(minutes=10)
    for status, minutes in (("succeeded", 4), ("failed", 1), ("failed", 2)):
        TrainingRun.objects.create(
            project=default_project(),
            snapshot=snapshot,
            status=status,
            started_at=start,
            finished_at=start + timedelta(minutes=minutes),
            desirable_weight=1.0,
            undesirable_weight=1.0,
        )
    ModelVersion.objects.create(
        project=default_project(), name="v7", status=ModelVersion.Status.ACTIVE, artifact_path=str(tmp_path)
    )

    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert 'prospect_votes{label="undesirable"} 1.0' in text
    assert 'prospect_votes{label="desirable"} 0.0' in text
    assert "prospect_annotation_queue_depth 1.0" in text
    assert 'prospect_training_runs{status="failed"} 2.0' in text
    assert 'prospect_training_run_duration_seconds_sum{status="failed"} 180.0' in text
    assert 'prospect_training_run_duration_seconds_sum{status="succeeded"} 240.0' in text
    active = ModelVersion.objects.get(name="v7")
    assert f'prospect_active_model_version{{name="v7"}} {float(active.pk)}' in text


def test_metrics_refuse_a_remote_scraper_without_the_token(client, settings):
    settings.PROSPECT_METRICS_TOKEN = ""
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    settings.PROSPECT_METRICS_TOKEN = "s3cret"
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
    assert client.get("/metrics").status_code == 403  # with a token set, localhost needs it too
