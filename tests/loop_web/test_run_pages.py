"""The runs list, a run's page, its JSON progress and its cancel button (staff only)."""
from __future__ import annotations

import pytest
from django.urls import reverse

from feedback.models import DatasetSnapshot
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db

METRIC_ROWS = [
    {"step": 1, "loss": 0.5, "z0": 0.0, "reward_desirable": 0.01, "reward_undesirable": -0.02, "reward_accuracy": 0.5},
    {"step": 2, "loss": 0.45, "z0": 0.01, "reward_desirable": 0.05, "reward_undesirable": -0.06, "reward_accuracy": 0.7},
]


@pytest.fixture
def running_run():
    snapshot = DatasetSnapshot.objects.create(path="/nowhere/snapshot.jsonl", sha256="1" * 64)
    base = ModelVersion.objects.create(name="base", base_model="/m", artifact_path="/m")
    return TrainingRun.objects.create(
        snapshot=snapshot, base_version=base, status=TrainingRun.Status.RUNNING, progress=0.4,
        current_step=2, total_steps=5, metrics=METRIC_ROWS, log_tail="step 2/5 loss 0.45",
    )


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_progress_json_carries_status_progress_series_and_log(staff_client, running_run):
    data = staff_client.get(reverse("training:run_progress", args=[running_run.pk])).json()
    assert data["status"] == "running"
    assert data["progress"] == pytest.approx(0.4)
    assert data["metrics"]["step"] == [1, 2]
    assert data["metrics"]["loss"] == [0.5, 0.45]
    assert data["metrics"]["z0"] == [0.0, 0.01]
    assert data["log_tail"] == "step 2/5 loss 0.45"


def test_run_page_has_the_live_widgets_and_a_cancel_button(staff_client, running_run):
    html = staff_client.get(reverse("training:run_detail", args=[running_run.pk])).content.decode()
    assert f'data-progress-url="{reverse("training:run_progress", args=[running_run.pk])}"' in html
    for element in ('id="run-progress"', 'id="chart-loss"', 'id="chart-reward"', 'id="chart-z0"', 'id="run-log"'):
        assert element in html
    assert 'id="run-cancel" method="post"' in html and "Cancel run" in html
    assert "training/run_detail.js" in html and "vendor/chartjs/chart.umd.min.js" in html


def test_cancel_stops_a_running_run(staff_client, running_run):
    response = staff_client.post(reverse("training:cancel", args=[running_run.pk]), follow=True)
    running_run.refresh_from_db()
    assert running_run.status == TrainingRun.Status.CANCELLED
    assert f"Run {running_run.pk} is being cancelled." in response.content.decode()


def test_cancelling_a_finished_run_is_refused_and_changes_nothing(staff_client, running_run):
    TrainingRun.objects.filter(pk=running_run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    response = staff_client.post(reverse("training:cancel", args=[running_run.pk]), follow=True)
    running_run.refresh_from_db()
    assert running_run.status == TrainingRun.Status.SUCCEEDED
    assert f"Could not cancel run {running_run.pk}" in response.content.decode()


def test_runs_list_links_each_run(staff_client, running_run):
    html = staff_client.get(reverse("training:runs")).content.decode()
    assert reverse("training:run_detail", args=[running_run.pk]) in html
    assert "running" in html and "40%" in html


def test_unknown_run_is_404(staff_client):
    assert staff_client.get(reverse("training:run_progress", args=[999999])).status_code == 404
