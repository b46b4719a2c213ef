"""An admin starts a run in the browser, watches it train live (no reload), then promotes it."""
from __future__ import annotations

import time

import pytest

from training import services
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.browser, pytest.mark.slow]

RUN_TIMEOUT_S = 300


@pytest.fixture
def tiny_training_policy(active_demo_version, demo_model_dir):
    """Defaults for a few-step run; the gate must not auto-promote, so the admin's click decides."""
    policy = services.get_policy()
    policy.base_model = demo_model_dir
    policy.per_device_train_batch_size = 4
    policy.max_length = 32
    policy.judge = "none"
    policy.promote_margin = 1e9  # no candidate can beat the active version by this much
    policy.save()
    return policy


def test_admin_starts_a_run_watches_it_live_and_promotes_it(
    page, live_server, admin_user, password, voted_demo_data, tiny_training_policy, celery_worker_process,
):
    page.goto(f"{live_server.url}/accounts/login/?next=/runs/new/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", password)
    page.press("#id_password", "Enter")
    page.wait_for_url("**/runs/new/")

    page.fill("#id_max_steps", "6")
    page.fill("#id_learning_rate", "0.0005")
    page.click("#retrain-submit")
    page.wait_for_url("**/runs/*/")
    run = TrainingRun.objects.get()
    assert run.config["max_steps"] == 6
    assert run.requested_by == admin_user

    # Anything navigating or reloading the page would wipe this marker.
    page.evaluate("window.__watchMarker = 'still the same page'")
    seen_progress = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        status = page.get_attribute("#run-live", "data-status")
        seen_progress.append(float(page.get_attribute("#run-progress", "data-value")))
        if status in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(250)
    run.refresh_from_db()
    assert status == "succeeded", f"run ended {run.status}: {run.error}\n{run.log_tail[-2000:]}"
    assert seen_progress[0] < 1.0 and seen_progress[-1] == 1.0
    assert seen_progress == sorted(seen_progress)  # the bar only moves forward
    assert page.evaluate("window.__watchMarker") == "still the same page"
    assert page.evaluate("Chart.getChart('chart-loss').data.datasets[0].data.length") >= 1
    assert page.locator("#run-log").inner_text().strip()

    # The gate keeps the candidate (margin out of reach); wait for its verdict on the same page.
    page.wait_for_function(
        "['done', 'failed', 'not-required'].includes(document.getElementById('run-live').dataset.gate)",
        timeout=RUN_TIMEOUT_S * 1000,
    )
    assert page.evaluate("window.__watchMarker") == "still the same page"
    candidate = ModelVersion.objects.get(created_by_run=run)
    assert candidate.status == ModelVersion.Status.CANDIDATE

    page.click("#versions-link")
    page.wait_for_url("**/models/")
    page.click(f"#version-{candidate.pk} .promote-button")
    with page.expect_navigation():
        page.click("#confirm-ok")  # the dialog names what will change
    page.wait_for_url("**/models/")
    assert page.inner_text("#active-version") == candidate.name
    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.ACTIVE
    assert ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).count() == 1
