"""The runs list, a run's page, its JSON progress and its cancel button (staff only).

'Retrain now': the form's overrides reach the run; bad values are named and nothing is queued; without
a chosen snapshot the request only queues a snapshot job, whose worker cuts it and starts the run.

Promote, roll back and reject from the Models page: POST forms with CSRF, one active version.

Every staff page of the loop refuses annotators (403) and sends anonymous visitors to log in.

An admin starts a run in the browser, watches it train live (no reload), then promotes it.
"""

from __future__ import annotations

import re
import time

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import resolve, reverse

from feedback.content import prompt_sha256
from feedback.models import DatasetSnapshot, Job
from feedback.services import jobs
from projects.selectors import default_project
from tests.helpers import wait_for
from tests.training.helpers import cast_demo_votes, loadable_artifact
from training import registry
from training.models import HeldoutOutput, ModelVersion, TrainingRun
from training.policy import get_policy

# --- run pages ----------------------------------------


METRIC_ROWS = [
    {"step": 1, "loss": 0.5, "z0": 0.0, "reward_desirable": 0.01, "reward_undesirable": -0.02, "reward_accuracy": 0.5},
    {
        "step": 2,
        "loss": 0.45,
        "z0": 0.01,
        "reward_desirable": 0.05,
        "reward_undesirable": -0.06,
        "reward_accuracy": 0.7,
    },
]


@pytest.fixture
def running_run():
    snapshot = DatasetSnapshot.objects.create(
        project=default_project(), path="/nowhere/snapshot.jsonl", sha256="1" * 64
    )
    base = ModelVersion.objects.create(project=default_project(), name="base", base_model="/m", artifact_path="/m")
    return TrainingRun.objects.create(
        project=default_project(),
        snapshot=snapshot,
        base_version=base,
        desirable_weight=1.0,
        undesirable_weight=1.0,
        status=TrainingRun.Status.RUNNING,
        progress=0.4,
        current_step=2,
        total_steps=5,
        metrics=METRIC_ROWS,
        log_tail="step 2/5 loss 0.45",
    )


@pytest.fixture
def staff_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_progress_json_carries_status_progress_series_and_log(staff_client, running_run):
    data = staff_client.get(reverse("training:run_progress", args=[running_run.pk])).json()
    assert data["status"] == "running"
    assert data["progress"] == pytest.approx(0.4)
    assert data["metrics"]["step"] == [1, 2]
    assert data["metrics"]["loss"] == [0.5, 0.45]
    assert data["metrics"]["z0"] == [0.0, 0.01]
    assert data["log_tail"] == "step 2/5 loss 0.45"


@pytest.mark.django_db
def test_run_page_has_the_live_widgets_and_a_cancel_button(staff_client, running_run):
    html = staff_client.get(reverse("training:run_detail", args=[running_run.pk])).content.decode()
    assert f'data-progress-url="{reverse("training:run_progress", args=[running_run.pk])}"' in html
    for element in ('id="run-progress"', 'id="chart-loss"', 'id="chart-reward"', 'id="chart-z0"', 'id="run-log"'):
        assert element in html
    assert 'id="run-cancel" method="post"' in html and "Cancel run" in html
    assert "training/run_detail.js" in html and "vendor/chartjs/chart.umd.min.js" in html


@pytest.mark.django_db
def test_cancel_stops_a_running_run(staff_client, running_run):
    response = staff_client.post(reverse("training:cancel", args=[running_run.pk]), follow=True)
    running_run.refresh_from_db()
    assert running_run.status == TrainingRun.Status.CANCELLED
    assert f"Run {running_run.pk} is being cancelled." in response.content.decode()


@pytest.mark.django_db
def test_cancelling_a_finished_run_is_refused_and_changes_nothing(staff_client, running_run):
    TrainingRun.objects.filter(pk=running_run.pk).update(status=TrainingRun.Status.SUCCEEDED)
    response = staff_client.post(reverse("training:cancel", args=[running_run.pk]), follow=True)
    running_run.refresh_from_db()
    assert running_run.status == TrainingRun.Status.SUCCEEDED
    assert f"Could not cancel run {running_run.pk}" in response.content.decode()


@pytest.mark.django_db
def test_runs_list_links_each_run(staff_client, running_run):
    html = staff_client.get(reverse("training:runs")).content.decode()
    assert reverse("training:run_detail", args=[running_run.pk]) in html
    assert "running" in html and "40%" in html


@pytest.mark.django_db
def test_unknown_run_is_404(staff_client):
    assert staff_client.get(reverse("training:run_progress", args=[999999])).status_code == 404


# --- retrain form ----------------------------------------


def queued_job(response) -> Job:
    """The snapshot job a "retrain now" POST queued, from where it sent the browser."""
    assert response.status_code == 302
    match = resolve(response["Location"])
    assert match.view_name == "feedback:job"
    return Job.objects.get(pk=match.kwargs["job_id"])


@pytest.mark.django_db
def test_overrides_are_passed_to_the_run(client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path):
    settings.DATA_DIR = tmp_path  # the snapshot file of the run goes here
    client.force_login(admin_user)
    response = client.post(
        reverse("training:retrain"),
        {
            "beta": "0.3",
            "learning_rate": "0.0002",
            "num_train_epochs": "2",
            "max_steps": "5",
            "lora": "1",
            "loss": "concave",
            "lambda_mode": "manual",
            "desirable_weight": "1.5",
            "undesirable_weight": "1",
        },
    )
    job = queued_job(response)
    # The request only queued the snapshot: the worker cuts it and starts the run.
    assert (job.kind, job.status) == (Job.Kind.SNAPSHOT, Job.Status.QUEUED)
    assert not DatasetSnapshot.objects.exists() and not TrainingRun.objects.exists()
    assert jobs.run_job(job.pk).status == Job.Status.SUCCEEDED
    run = TrainingRun.objects.get()
    job.refresh_from_db()
    assert run.snapshot == job.snapshot
    assert (job.result["run_id"], job.result["run_url"]) == (run.pk, reverse("training:run_detail", args=[run.pk]))
    assert run.status == TrainingRun.Status.QUEUED
    assert run.requested_by == admin_user
    assert run.base_version == active_demo_version
    config = run.config
    assert (config["beta"], config["learning_rate"], config["num_train_epochs"], config["max_steps"]) == (
        0.3,
        2e-4,
        2.0,
        5,
    )
    assert (config["lora"], config["loss"], config["lambda_mode"]) == (True, "concave", "manual")
    assert (config["desirable_weight"], config["undesirable_weight"]) == (1.5, 1.0)
    # The snapshot cut for the run used the manual weights.
    assert (run.snapshot.desirable_weight, run.snapshot.undesirable_weight) == (1.5, 1.0)
    # The job page links the run (its script moves on to it).
    html = client.get(response["Location"]).content.decode()
    assert f'id="job-run" href="{reverse("training:run_detail", args=[run.pk])}"' in html
    # A second delivery of the job's task starts no second run.
    assert jobs.run_job(job.pk) is None
    assert TrainingRun.objects.count() == 1


@pytest.mark.django_db
def test_blank_fields_keep_the_defaults(client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path):
    from training.policy import default_training_config

    settings.DATA_DIR = tmp_path
    client.force_login(admin_user)
    jobs.run_job(queued_job(client.post(reverse("training:retrain"), {})).pk)
    run = TrainingRun.objects.get()
    defaults = default_training_config()
    for key in ("beta", "learning_rate", "num_train_epochs", "lora", "loss", "lambda_mode"):
        assert run.config[key] == defaults[key], key


@pytest.mark.django_db
def test_a_chosen_snapshot_queues_the_run_at_once(
    client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path
):
    from feedback.services import create_snapshot

    settings.DATA_DIR = tmp_path
    snapshot = create_snapshot()
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), {"snapshot": snapshot.pk})
    run = TrainingRun.objects.get()
    assert response["Location"] == reverse("training:run_detail", args=[run.pk])
    assert run.snapshot == snapshot and not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "data, field",
    [
        ({"beta": "-1"}, "beta"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"max_steps": "0"}, "max_steps"),
        ({"loss": "magic"}, "loss"),
        ({"lambda_mode": "manual"}, "desirable_weight"),
    ],
)
def test_bad_values_are_named_and_nothing_is_queued(client, admin_user, active_demo_version, data, field):
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), data)
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert TrainingRun.objects.count() == 0


@pytest.mark.django_db
def test_a_refused_snapshot_fails_its_job_visibly_and_starts_no_run(
    client, admin_user, active_demo_version, settings, tmp_path
):
    settings.DATA_DIR = tmp_path
    client.force_login(admin_user)
    response = client.post(reverse("training:retrain"), {})  # no votes at all: no dataset to train on
    job = queued_job(response)
    assert jobs.run_job(job.pk).status == Job.Status.FAILED
    assert "no votes yet" in job_errors(job)
    html = client.get(response["Location"]).content.decode()
    assert 'id="job-errors"' in html and "there are no votes yet" in html
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists()


@pytest.mark.django_db
def test_a_run_refused_after_the_snapshot_fails_the_job_and_keeps_no_snapshot(
    client, admin_user, active_demo_version, voted_demo_data, settings, tmp_path
):
    settings.DATA_DIR = tmp_path
    client.force_login(admin_user)
    job = queued_job(client.post(reverse("training:retrain"), {}))
    ModelVersion.objects.filter(pk=active_demo_version.pk).delete()  # the run's base version is gone
    assert jobs.run_job(job.pk).status == Job.Status.FAILED
    assert f"base version {active_demo_version.pk} was deleted" in job_errors(job)
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists()
    # Nor its file: the snapshot was written before the run was refused, and went with the row.
    assert not list((tmp_path / "snapshots").iterdir())


def job_errors(job: Job) -> str:
    job.refresh_from_db()
    return " ".join(error["detail"] for error in job.errors)


def test_retrain_now_queues_a_snapshot_job_that_a_real_worker_turns_into_a_run(
    committed_db, loop_redis, start_worker, client, admin_user, active_demo_version
):
    """As deployed: the request answers before any snapshot exists; a worker on the default queue
    cuts it and queues the run on the gpu queue (no gpu worker here: the run stays queued, sent)."""
    worker = start_worker("default")
    client.force_login(admin_user)

    def finished(job: Job):
        job.refresh_from_db()
        return job.finished

    # No votes yet: the job fails with the reason, and no run is started.
    refused = queued_job(client.post(reverse("training:retrain"), {}))
    wait_for(lambda: finished(refused), 60, "the refused snapshot job", on_timeout=worker.log)
    assert refused.status == Job.Status.FAILED and "no votes yet" in job_errors(refused)
    assert not TrainingRun.objects.exists()

    cast_demo_votes(12, seed=5, voter="tester")
    # Not cut inside the request: the request's own queries write no snapshot row (the worker,
    # in its own process and connection, may already be cutting it when the response arrives).
    with CaptureQueriesContext(connection) as request_queries:
        job = queued_job(client.post(reverse("training:retrain"), {"max_steps": "3"}))
    inserts = [q["sql"] for q in request_queries.captured_queries if q["sql"].lstrip().upper().startswith("INSERT")]
    assert any(Job._meta.db_table in sql for sql in inserts)  # the capture saw the request queue its job
    snapshot_table = DatasetSnapshot._meta.db_table
    writes = [q["sql"] for q in request_queries.captured_queries if snapshot_table in q["sql"]]
    assert not [sql for sql in writes if sql.lstrip().upper().startswith(("INSERT", "UPDATE"))], writes
    wait_for(lambda: finished(job), 60, "the snapshot job", on_timeout=worker.log)
    assert job.status == Job.Status.SUCCEEDED, (job.errors, worker.log()[-3000:])
    run = TrainingRun.objects.get()
    assert (run.snapshot_id, run.status, run.config["max_steps"]) == (job.snapshot_id, TrainingRun.Status.QUEUED, 3)
    assert job.result["run_id"] == run.pk
    wait_for(
        lambda: TrainingRun.objects.filter(pk=run.pk, enqueued_at__isnull=False).exists(), 30, "the run to be sent"
    )


# --- versions page actions ----------------------------------------


@pytest.fixture
def versions(tmp_path):
    base_dir = loadable_artifact(tmp_path / "base")
    base = ModelVersion.objects.create(
        project=default_project(), name="base", base_model=base_dir, artifact_path=base_dir
    )
    registry.promote(base, reason="first")
    candidate = ModelVersion.objects.create(
        project=default_project(),
        name="run-7",
        base_model=base_dir,
        artifact_path=loadable_artifact(tmp_path / "runs" / "7" / "final"),
        parent=base,
        metrics={
            "holdout": {"loss": 0.4123456, "reward_accuracy": 0.7},
            "demo_accuracy": 0.61,
            "gate": {"decision": "kept as candidate"},
        },
    )
    return base, candidate


@pytest.fixture
def csrf_checking_staff_client(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    return client


def csrf_token_from(client, url) -> str:
    html = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


@pytest.mark.django_db
def test_page_shows_metrics_side_by_side(csrf_checking_staff_client, versions):
    html = csrf_checking_staff_client.get(reverse("training:versions")).content.decode()
    header = html[html.index("<thead>") : html.index("</thead>")]
    # Human labels, not metric keys; the gate's full record is under "details", not a column.
    columns = re.findall(r"<th[^>]*>([^<]+)</th>", header)
    assert columns == ["Version", "Status", "Accuracy", "Holdout loss", "Reward accuracy", "Gate verdict", "Actions"]
    assert "0.4123" in html and "61.0 %" in html
    assert 'id="active-version">base<' in html


def _heldout_sections(html: str) -> list[tuple[str, str, list[str]]]:
    """(data-differs, prompt text, [A's output, B's output]) of each held-out item on the compare page."""
    block = html[html.index('id="compare-heldout"') : html.index("Outputs on served prompts")]
    sections = re.findall(
        r'<section class="card compare-item heldout-item[^"]*" data-differs="(\w+)">(.*?)</section>', block, re.S
    )
    texts = [re.findall(r'<div class="text">(.*?)</div>', body, re.S) for _, body in sections]
    return [(differs, found[0], found[1:]) for (differs, _), found in zip(sections, texts)]


@pytest.mark.django_db
def test_compare_shows_both_versions_on_the_same_heldout_prompts_aligned(csrf_checking_staff_client, versions):
    base, candidate = versions
    for version, answers in (
        (base, {"What is 12+7?": "29", "What is 3+4?": "7", "What is 1+1?": "2"}),
        # Stored in another order, and one prompt the base has no output for.
        (candidate, {"What is 9+9?": "18", "What is 3+4?": "7", "What is 12+7?": "19"}),
    ):
        HeldoutOutput.objects.bulk_create(
            HeldoutOutput(version=version, prompt=prompt, prompt_sha256=prompt_sha256(prompt), completion=answer)
            for prompt, answer in answers.items()
        )
    HeldoutOutput.objects.create(
        version=base,
        prompt=[{"role": "user", "content": "Say hi"}],
        prompt_sha256=prompt_sha256([{"role": "user", "content": "Say hi"}]),
        completion="hi",
    )

    url = reverse("training:compare") + f"?a={base.pk}&b={candidate.pk}"
    html = csrf_checking_staff_client.get(url).content.decode()

    # Only the prompts both have, in A's order, each row A | B; a different answer is flagged.
    assert _heldout_sections(html) == [("true", "What is 12+7?", ["29", "19"]), ("false", "What is 3+4?", ["7", "7"])]
    assert html.index("Outputs on the same held-out prompts") < html.index("Outputs on served prompts")
    # Swapping A and B swaps the columns and follows B's order now.
    html = csrf_checking_staff_client.get(
        reverse("training:compare") + f"?a={candidate.pk}&b={base.pk}"
    ).content.decode()
    assert _heldout_sections(html) == [("false", "What is 3+4?", ["7", "7"]), ("true", "What is 12+7?", ["19", "29"])]
    # No held-out outputs for one of them: the page says so instead of an empty list.
    HeldoutOutput.objects.filter(version=candidate).delete()
    html = csrf_checking_staff_client.get(url).content.decode()
    assert 'id="compare-heldout"' not in html and 'id="compare-no-heldout"' in html


@pytest.mark.django_db
def test_promote_then_roll_back(csrf_checking_staff_client, versions):
    base, candidate = versions
    token = csrf_token_from(csrf_checking_staff_client, reverse("training:versions"))
    response = csrf_checking_staff_client.post(
        reverse("training:promote", args=[candidate.pk]), {"csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    candidate.refresh_from_db()
    base.refresh_from_db()
    assert (candidate.status, base.status) == ("active", "retired")

    response = csrf_checking_staff_client.post(
        reverse("training:rollback"), {"csrfmiddlewaretoken": token}, follow=True
    )
    candidate.refresh_from_db()
    base.refresh_from_db()
    assert (candidate.status, base.status) == ("retired", "active")
    assert "base is active again" in response.content.decode()


@pytest.mark.django_db
def test_reject_records_the_reason(csrf_checking_staff_client, versions):
    _, candidate = versions
    token = csrf_token_from(csrf_checking_staff_client, reverse("training:versions"))
    csrf_checking_staff_client.post(
        reverse("training:reject", args=[candidate.pk]), {"csrfmiddlewaretoken": token, "reason": "worse on math"}
    )
    candidate.refresh_from_db()
    assert candidate.status == "rejected"
    assert candidate.status_reason == "worse on math"


@pytest.mark.django_db
def test_refused_action_is_shown_and_changes_nothing(csrf_checking_staff_client, versions):
    base, _ = versions
    token = csrf_token_from(csrf_checking_staff_client, reverse("training:versions"))
    response = csrf_checking_staff_client.post(
        reverse("training:reject", args=[base.pk]), {"csrfmiddlewaretoken": token}, follow=True
    )
    assert "Could not reject base" in response.content.decode()
    base.refresh_from_db()
    assert base.status == "active"


@pytest.mark.django_db
def test_post_without_csrf_token_is_refused(csrf_checking_staff_client, versions):
    _, candidate = versions
    response = csrf_checking_staff_client.post(reverse("training:promote", args=[candidate.pk]))
    assert response.status_code == 403
    candidate.refresh_from_db()
    assert candidate.status == "candidate"


# --- staff pages permissions ----------------------------------------


@pytest.fixture
def some_run_and_version():
    snapshot = DatasetSnapshot.objects.create(
        project=default_project(), path="/nonexistent/snapshot.jsonl", sha256="0" * 64
    )
    version = ModelVersion.objects.create(project=default_project(), name="v-test", base_model="/m", artifact_path="/m")
    run = TrainingRun.objects.create(
        project=default_project(), snapshot=snapshot, base_version=version, desirable_weight=1.0, undesirable_weight=1.0
    )
    return run, version


def staff_urls(run, version):
    return [
        ("get", reverse("training:runs")),
        ("get", reverse("training:run_detail", args=[run.pk])),
        ("get", reverse("training:run_progress", args=[run.pk])),
        ("get", reverse("training:versions")),
        ("get", reverse("training:retrain")),
        ("post", reverse("training:retrain")),
        ("post", reverse("training:cancel", args=[run.pk])),
        ("post", reverse("training:promote", args=[version.pk])),
        ("post", reverse("training:rollback")),
        ("post", reverse("training:reject", args=[version.pk])),
    ]


@pytest.mark.django_db
def test_annotator_gets_403_on_every_staff_page(client, annotator_user, some_run_and_version):
    client.force_login(annotator_user)
    for method, url in staff_urls(*some_run_and_version):
        response = getattr(client, method)(url)
        assert response.status_code == 403, (method, url, response.status_code)
    # Nothing changed behind the refusals.
    run, version = some_run_and_version
    run.refresh_from_db()
    version.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED
    assert version.status == ModelVersion.Status.CANDIDATE
    assert TrainingRun.objects.count() == 1


@pytest.mark.django_db
def test_anonymous_visitor_is_sent_to_login(client, some_run_and_version):
    login = reverse("login")
    for method, url in staff_urls(*some_run_and_version):
        response = getattr(client, method)(url)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith(login), (method, url, response["Location"])


@pytest.mark.django_db
def test_staff_sees_the_pages(client, admin_user, some_run_and_version):
    client.force_login(admin_user)
    for method, url in staff_urls(*some_run_and_version):
        if method == "get":
            assert client.get(url).status_code == 200, url


# --- browser run and promote ----------------------------------------


RUN_TIMEOUT_S = 300


@pytest.fixture
def tiny_training_policy(active_demo_version, demo_model_dir):
    """Defaults for a few-step run; the gate must not auto-promote, so the admin's click decides."""
    policy = get_policy()
    policy.base_model = demo_model_dir
    policy.per_device_train_batch_size = 4
    policy.max_length = 32
    policy.judges = "heldout"
    policy.min_holdout_examples = 10**6  # the judge refuses to decide: never promoted automatically
    policy.save()
    return policy


@pytest.mark.browser
@pytest.mark.slow
def test_admin_starts_a_run_watches_it_live_and_promotes_it(
    page,
    live_server,
    django_db_serialized_rollback,
    admin_user,
    password,
    voted_demo_data,
    tiny_training_policy,
    celery_worker_process,
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

    # The gate keeps the candidate (its judge refuses to decide); wait for its verdict on the same page.
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
