"""Imports and snapshots as jobs (feedback.services.jobs): the row is the source of truth, a task
delivered twice runs the job once, a refused file fails the job with line-numbered errors and
saves nothing, skipped lines are downloadable, and the commands keep their one JSON line."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.utils import timezone

from feedback.models import DatasetSnapshot, ImportBatch, Job, Vote
from feedback.services import jobs
from projects.selectors import default_project
from tests.feedback.helpers import ALL_SCOPES, add_labelled_examples, key_client, make_annotator, write_jsonl

GOOD = {"prompt": "p", "completion": "a", "label": True}


@pytest.fixture
def app(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "var"
    return key_client(scopes=ALL_SCOPES)


def upload(client, rows, **fields):
    handle = io.BytesIO("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows).encode())
    handle.name = "feedback.jsonl"
    response = client.post("/api/v1/imports/", {"file": handle, **fields}, format="multipart")
    assert response.status_code == 202, response.content
    return response.json()


@pytest.mark.django_db
def test_a_job_delivered_twice_runs_once(app):
    accepted = upload(app, [GOOD, {"prompt": "q", "completion": "b", "label": False}])
    assert jobs.run_job(accepted["id"]).status == Job.Status.SUCCEEDED
    assert jobs.run_job(accepted["id"]) is None  # the second delivery finds it no longer queued
    assert (ImportBatch.objects.count(), Vote.objects.count()) == (1, 2)


@pytest.mark.django_db
def test_a_job_abandoned_by_a_dead_worker_is_claimed_again_only_after_the_hard_limit(app, settings):
    job = Job.objects.get(pk=upload(app, [GOOD])["id"])
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
    assert jobs.run_job(job.pk) is None  # its worker may still be running it
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 1)
    Job.objects.filter(pk=job.pk).update(started_at=long_ago)
    assert jobs.run_job(job.pk).status == Job.Status.SUCCEEDED
    assert Vote.objects.count() == 1


@pytest.mark.django_db
def test_skip_counts_in_the_summary_and_the_skipped_lines_download_as_jsonl_and_csv(app):
    rows = [GOOD, "{not json", {"prompt": "p", "completion": "b", "label": "yes"}, {"prompt": "q", "completion": "c"}]
    accepted = upload(app, rows, on_invalid="skip")
    jobs.run_job(accepted["id"])
    job = app.get(accepted["status_url"]).json()
    assert job["status"] == "succeeded"
    assert (job["result"]["votes_created"], job["result"]["skipped"]) == (1, 3)

    jsonl = app.get(job["skipped_url"])
    assert jsonl.status_code == 200 and jsonl["Content-Type"].startswith("application/x-ndjson")
    listed = [json.loads(line) for line in jsonl.content.decode().splitlines()]
    assert [(row["line"], row["field"]) for row in listed] == [(2, None), (3, "label"), (4, "label")]
    assert "malformed JSON" in listed[0]["reason"]

    as_csv = app.get(job["skipped_url"] + "csv/")
    assert as_csv["Content-Type"].startswith("text/csv")
    assert [row["line"] for row in csv.DictReader(io.StringIO(as_csv.content.decode()))] == ["2", "3", "4"]


@pytest.mark.django_db
def test_fail_is_the_default_and_saves_nothing(app):
    accepted = upload(app, [GOOD, "{not json"])
    jobs.run_job(accepted["id"])
    job = app.get(accepted["status_url"]).json()
    assert job["status"] == "failed" and job["skipped_url"] is None
    assert job["errors"][0]["line"] == 2 and "nothing was imported" in job["errors"][0]["detail"]
    assert not Vote.objects.exists() and not ImportBatch.objects.exists()


@pytest.mark.django_db
def test_another_projects_job_answers_like_a_missing_one(app):
    from projects.services import create_project

    accepted = upload(app, [GOOD])
    stranger = key_client(project=create_project("other"), scopes=ALL_SCOPES)
    assert stranger.get(accepted["status_url"]).status_code == 404
    assert stranger.get(f"/api/v1/jobs/{accepted['id']}/skipped/").status_code == 404


@pytest.mark.django_db
def test_the_snapshot_api_answers_202_and_the_job_carries_the_snapshot(app):
    add_labelled_examples(4, 2)
    response = app.post("/api/v1/snapshots/", {"holdout": 0}, format="json")
    assert response.status_code == 202 and response["Location"] == response.json()["status_url"]
    assert not DatasetSnapshot.objects.exists()  # not in the request
    jobs.run_job(response.json()["id"])
    job = app.get(response["Location"]).json()
    snapshot = DatasetSnapshot.objects.get()
    assert job["status"] == "succeeded" and job["result"]["id"] == snapshot.pk
    assert (job["result"]["n_desirable"], job["result"]["n_undesirable"]) == (4, 2)


@pytest.mark.django_db
def test_the_upload_page_takes_on_invalid_and_its_job_page_links_the_skipped_lines(client, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "var"
    client.force_login(make_annotator("padmin", role="admin"))
    assert 'name="on_invalid"' in client.get("/dashboard/import/").content.decode()
    handle = io.BytesIO(b'{"prompt": "p", "completion": "a", "label": true}\n{"prompt": "p"}\n')
    handle.name = "mixed.jsonl"
    response = client.post("/dashboard/import/", {"file": handle, "format": "auto", "on_invalid": "skip"})
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/dashboard/jobs/{job.pk}/"
    queued = client.get(response["Location"]).content.decode()
    assert 'id="job-progress"' in queued and f"/api/v1/jobs/{job.pk}/" in queued  # the page polls it
    jobs.run_job(job.pk)
    page = client.get(response["Location"]).content.decode()
    assert 'id="skipped-download"' in page and f"/api/v1/jobs/{job.pk}/skipped/" in page
    assert "missing field &#x27;completion&#x27;" in page
    download = client.get(f"/api/v1/jobs/{job.pk}/skipped/")  # the admin's session may download
    assert download.status_code == 200 and json.loads(download.content)["line"] == 2


@pytest.mark.django_db
def test_the_commands_record_a_job_and_keep_their_one_json_line(tmp_path, settings):
    settings.DATA_DIR = tmp_path / "var"
    path = write_jsonl(tmp_path / "f.jsonl", [GOOD, {"prompt": "q", "completion": "b", "label": False}])
    out = StringIO()
    call_command("import_feedback", path, stdout=out)
    summary = json.loads(out.getvalue())
    job = Job.objects.get(kind=Job.Kind.IMPORT)
    assert (summary["job_id"], summary["import_id"], summary["votes_created"]) == (job.pk, job.import_batch_id, 2)
    assert job.status == Job.Status.SUCCEEDED and (tmp_path / "f.jsonl").exists()  # the user's file is kept

    out = StringIO()
    call_command("snapshot_dataset", "--holdout", "0", stdout=out)
    snapshot = json.loads(out.getvalue())
    assert Job.objects.get(kind=Job.Kind.SNAPSHOT).snapshot_id == snapshot["id"] == DatasetSnapshot.objects.get().pk


@pytest.mark.django_db(transaction=True)
def test_pollers_see_an_imports_progress_while_its_transaction_is_open(committed_db, settings, tmp_path, monkeypatch):
    """The worker publishes progress on a second connection; a third one (a poller) sees it move
    before the import commits. SQLite has one writer at a time: PostgreSQL only."""
    if connections["default"].vendor == "sqlite":
        pytest.skip("progress during the transaction needs a database with concurrent writers")
    from feedback.services import imports

    settings.DATA_DIR = tmp_path / "var"
    monkeypatch.setattr(imports, "CHUNK_SIZE", 10)
    monkeypatch.setattr(jobs, "PROGRESS_INTERVAL_SECONDS", 0)
    path = write_jsonl(
        tmp_path / "f.jsonl", [{"prompt": f"p{i}", "completion": "c", "label": True} for i in range(100)]
    )
    job = jobs.create_import_job(
        project=default_project(),
        upload_path=path,
        filename="f.jsonl",
        upload_bytes=(tmp_path / "f.jsonl").stat().st_size,
        send=False,
    )
    poller = connections["default"].copy()
    seen = []
    update = jobs.ProgressWriter.update

    def update_then_poll(self, fraction):
        update(self, fraction)
        with poller.cursor() as cursor:
            cursor.execute("SELECT progress, status FROM feedback_job WHERE id = %s", [job.pk])
            seen.append(cursor.fetchone())
        with poller.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM feedback_vote")
            seen[-1] += cursor.fetchone()

    monkeypatch.setattr(jobs.ProgressWriter, "update", update_then_poll)
    try:
        assert jobs.run_job(job.pk).status == Job.Status.SUCCEEDED
    finally:
        poller.close()
    middle = [progress for progress, status, votes in seen if status == "running" and votes == 0]
    assert len(middle) >= 5 and middle == sorted(middle) and 0 < middle[0] < middle[-1] < 1


@pytest.mark.django_db
def test_a_job_accepted_while_the_broker_was_down_is_sent_by_the_dispatcher(app, loop_redis):
    import redis

    from config.celery import installation_key_prefix

    job = Job.objects.get(pk=upload(app, [GOOD])["id"])  # in a test transaction: never sent on commit
    assert job.enqueued_at is None
    assert jobs.dispatch_pending_jobs() == [job.pk]
    assert jobs.dispatch_pending_jobs() == []  # sent once
    job.refresh_from_db()
    assert job.enqueued_at is not None
    queued = redis.Redis.from_url(loop_redis).lrange(f"{installation_key_prefix()}default", 0, -1)
    headers = [json.loads(message)["headers"] for message in queued]
    assert [(h["task"], h["argsrepr"]) for h in headers] == [(jobs.RUN_JOB_TASK, f"[{job.pk}]")]


@pytest.mark.django_db
def test_a_project_admins_session_upload_with_csrf_still_lands_in_the_upload_folder(settings, tmp_path):
    from django.test import Client

    settings.DATA_DIR = tmp_path / "var"
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(make_annotator("padmin", role="admin"))
    browser.get("/dashboard/import/")  # sets the CSRF cookie
    handle = io.BytesIO(json.dumps(GOOD).encode() + b"\n")
    handle.name = "f.jsonl"
    # The CSRF check reads the form (and so the file) before the view runs.
    response = browser.post(
        "/api/v1/imports/", {"file": handle, "csrfmiddlewaretoken": browser.cookies["csrftoken"].value}
    )
    assert response.status_code == 202, response.content
    job = Job.objects.get()
    assert job.upload_path.startswith(str((settings.DATA_DIR / "uploads").resolve()))
    assert jobs.run_job(job.pk).status == Job.Status.SUCCEEDED and Vote.objects.count() == 1


@pytest.mark.django_db
def test_a_job_whose_worker_was_killed_is_failed_by_the_periodic_check(app, settings):
    stuck = Job.objects.get(pk=upload(app, [GOOD])["id"])
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 1)
    Job.objects.filter(pk=stuck.pk).update(status=Job.Status.RUNNING, started_at=long_ago)
    running = Job.objects.get(pk=upload(app, [GOOD])["id"])
    Job.objects.filter(pk=running.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
    assert jobs.fail_abandoned_jobs() == [stuck.pk]
    stuck.refresh_from_db()
    assert stuck.status == Job.Status.FAILED and "stopped before it finished" in stuck.errors[0]["detail"]
    assert Job.objects.get(pk=running.pk).status == Job.Status.RUNNING
    assert not Path(stuck.upload_path).exists()
