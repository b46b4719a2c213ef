"""Imports and snapshots as jobs: a row the web creates, a Celery worker runs, anyone polls.

    create_import_job(...) / create_snapshot_job(...)  -> Job (queued; sent once committed)
    run_job(job_id)                                      -> Job | None (what the task calls)
    dispatch_pending_jobs()                              -> ids sent again (the broker was down)
    register_snapshot_follow_up(name, function)          -> None (apps above feedback: what a
                                                            snapshot job may do next with its snapshot)

The job's `status` is the source of truth. run_job claims a queued job with a conditional UPDATE,
so a task delivered twice runs it once; the work and the job's success are one transaction, so a
job is never "succeeded" without its import or snapshot, nor the other way round. A snapshot job
may name a follow-up (params["then"], e.g. training's "start a run from it"): it runs in that same
transaction, so the snapshot, the follow-up's rows and the job's success happen together or not at
all, and a refused follow-up fails the job with its reason. A job left
running by a dead worker is claimed again once the task's hard time limit has passed since it
started (the worker that claimed it cannot still be running it).

The worker publishes `progress` as it goes on a second database connection, because the work's
own transaction is not visible to the pollers until it commits. SQLite allows one writer at a
time, so there (and when the caller is already inside a transaction) progress moves only at the
start and the end.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from feedback.importers import ImportRejected
from feedback.models import DatasetSnapshot, Job
from feedback.services.imports import import_feedback
from feedback.services.snapshots import (
    SnapshotRefused,
    create_snapshot,
    snapshot_files_removed_on_error,
    snapshot_summary,
)
from projects.models import Project

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "feedback.tasks.run_job"
# Progress is written at most this often, and only when it moved by at least PROGRESS_STEP.
PROGRESS_INTERVAL_SECONDS = 0.5
PROGRESS_STEP = 0.01


class JobLost(RuntimeError):
    """The job stopped being this worker's while it ran (claimed again): its work is rolled back."""


class FollowUpRefused(Exception):
    """A snapshot job's follow-up cannot be done (its message says why): the job fails, nothing is kept."""


# name -> function(job, snapshot, then) -> dict merged into the job's result. Registered by the apps
# that build on feedback (training, in its AppConfig.ready), since feedback imports none of them.
SnapshotFollowUp = Callable[[Job, DatasetSnapshot, dict], dict]
_SNAPSHOT_FOLLOW_UPS: dict[str, SnapshotFollowUp] = {}


def register_snapshot_follow_up(name: str, function: SnapshotFollowUp) -> None:
    _SNAPSHOT_FOLLOW_UPS[name] = function


def upload_dir() -> Path:
    path = Path(settings.DATA_DIR) / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- Creating and sending ----------------------------------------------------------------------
def create_import_job(
    *,
    project: Project,
    upload_path: str,
    filename: str,
    upload_bytes: int,
    fmt: str = "auto",
    threshold: float | None = None,
    weight_by_distance: bool = False,
    one_y_per_x: bool = False,
    on_invalid: str = "fail",
    user=None,
    api_client_id: str | None = None,
    send: bool = True,
) -> Job:
    """A queued import of a file already on disk (the job owns it from now on and deletes it when done)."""
    params = {
        "format": fmt,
        "threshold": threshold,
        "weight_by_distance": weight_by_distance,
        "one_y_per_x": one_y_per_x,
        "on_invalid": on_invalid,
    }
    return _create(
        Job.Kind.IMPORT,
        project,
        params,
        user,
        api_client_id,
        send,
        upload_path=str(upload_path),
        filename=filename[:500],
        upload_bytes=upload_bytes,
    )


def create_snapshot_job(
    *,
    project: Project,
    holdout: float | None = None,
    target_ratio: float | None = None,
    mode: str = "auto",
    manual_weights: tuple[float, float] | None = None,
    seed: int = 0,
    user=None,
    api_client_id: str | None = None,
    send: bool = True,
    then: dict | None = None,
) -> Job:
    """A queued snapshot; `then` ({"name": a registered follow-up, ...its arguments}) is done with the
    snapshot in the job's transaction once it is cut."""
    if then is not None and then.get("name") not in _SNAPSHOT_FOLLOW_UPS:
        raise ValueError(f"no snapshot follow-up named {then.get('name')!r} is registered")
    params = {
        "holdout": settings.SNAPSHOT_HOLDOUT if holdout is None else holdout,
        "target_ratio": settings.KTO_TARGET_RATIO if target_ratio is None else target_ratio,
        "mode": mode,
        "manual_weights": list(manual_weights) if manual_weights else None,
        "seed": seed,
        "then": then,
    }
    return _create(Job.Kind.SNAPSHOT, project, params, user, api_client_id, send)


def _create(kind, project, params, user, api_client_id, send, **fields) -> Job:
    job = Job.objects.create(
        project=project,
        kind=kind,
        params=params,
        created_by=user if user is not None and user.is_authenticated else None,
        api_client_id=api_client_id,
        **fields,
    )
    if send:
        job_id = job.pk
        # Sent once the row is committed, so the worker always finds it.
        transaction.on_commit(lambda: enqueue_job(job_id))
    return job


def enqueue_job(job_id: int) -> bool:
    """Send the job's task; False (logged, the dispatcher retries) when the broker is unreachable.

    Accepting the job never depends on the broker being up at that moment."""
    try:
        current_app.send_task(RUN_JOB_TASK, args=[job_id], retry=False)
    except Exception as exc:  # kombu raises various OperationalError/ConnectionError flavours
        logger.warning("job %s: could not reach the broker (%s); the dispatcher will send it later", job_id, exc)
        return False
    Job.objects.filter(pk=job_id, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return True


def dispatch_pending_jobs() -> list[int]:
    """Send the queued jobs whose message never reached the broker (sending twice is harmless),
    and fail the running ones whose worker is gone. Called periodically (beat's retrain check)."""
    fail_abandoned_jobs()
    pending = Job.objects.filter(status=Job.Status.QUEUED, enqueued_at__isnull=True).order_by("pk")
    return [job_id for job_id in pending.values_list("pk", flat=True) if enqueue_job(job_id)]


def fail_abandoned_jobs() -> list[int]:
    """Running jobs older than the task's hard time limit: their worker was killed (the limit, a
    crash) and their transaction rolled back. Failed, so that nobody waits for them forever."""
    abandoned_before = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    failed = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, started_at__lt=abandoned_before):
        detail = (
            "the worker running this job stopped before it finished (killed, or over the task time limit "
            "PROSPECT_TASK_TIME_LIMIT_SECONDS); nothing was saved"
        )
        _fail(job, [{"line": None, "field": None, "detail": detail}])
        if job.kind == Job.Kind.IMPORT:
            _remove_upload(job)
        failed.append(job.pk)
    return failed


# --- Running -----------------------------------------------------------------------------------
def claim_job(job_id: int) -> Job | None:
    """Mark the job running and return it, or None when it is not this delivery's to run."""
    now = timezone.now()
    # A job still "running" after the task's hard time limit lost its worker (killed or crashed).
    abandoned_before = now - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT)
    claimable = Job.objects.filter(
        Q(status=Job.Status.QUEUED) | Q(status=Job.Status.RUNNING, started_at__lt=abandoned_before), pk=job_id
    )
    if not claimable.update(status=Job.Status.RUNNING, started_at=now, progress=0.0):
        return None
    return Job.objects.get(pk=job_id)


def run_job(job_id: int) -> Job | None:
    """Run a queued job to its end (succeeded or failed); None when there was nothing to run."""
    job = claim_job(job_id)
    if job is None:
        logger.info("job %s: not queued (already run, or running elsewhere); nothing to do", job_id)
        return None
    runner = _run_import if job.kind == Job.Kind.IMPORT else _run_snapshot
    progress = ProgressWriter(job.pk)
    try:
        runner(job, progress)
    except (ImportRejected, SnapshotRefused, FollowUpRefused) as exc:
        _fail(job, [_error(exc)])
    except JobLost:
        logger.warning("job %s was claimed again while it ran; this attempt was rolled back", job.pk)
    except Exception as exc:
        logger.exception("job %s failed", job.pk)
        _fail(job, [{"line": None, "field": None, "detail": f"internal error ({type(exc).__name__}); see the logs"}])
    finally:
        progress.close()
    if job.kind == Job.Kind.IMPORT:
        _remove_upload(job)
    job.refresh_from_db()
    return job


def _run_import(job: Job, progress: ProgressWriter) -> None:
    params = job.params
    total = max(job.upload_bytes, 1)
    with open(job.upload_path, "rb") as stream:

        def on_progress() -> None:
            progress.update(stream.tell() / total)

        with transaction.atomic():
            batch = import_feedback(
                stream,
                filename=job.filename,
                fmt=params.get("format", "auto"),
                threshold=params.get("threshold"),
                weight_by_distance=params.get("weight_by_distance", False),
                one_y_per_x=params.get("one_y_per_x", False),
                on_invalid=params.get("on_invalid", "fail"),
                user=job.created_by,
                project=job.project,
                api_client_id=job.api_client_id,
                on_progress=on_progress,
            )
            _succeed(job, {"import_id": batch.pk, **batch.summary()}, import_batch=batch)


def _run_snapshot(job: Job, progress: ProgressWriter) -> None:
    params = job.params
    manual = params.get("manual_weights")
    # A refused follow-up, a lost claim or a failed commit rolls the snapshot's row back with the job.
    with snapshot_files_removed_on_error() as created, transaction.atomic():
        snapshot = create_snapshot(
            holdout=params.get("holdout"),
            target_ratio=params.get("target_ratio"),
            mode=params.get("mode", "auto"),
            manual_weights=tuple(manual) if manual else None,
            seed=params.get("seed", 0),
            project=job.project,
            on_progress=progress.update,
        )
        created.append(snapshot)
        result = snapshot_summary(snapshot)
        then = params.get("then")
        if then:
            follow_up = _SNAPSHOT_FOLLOW_UPS.get(then["name"])
            if follow_up is None:  # this worker lacks the app that queued it
                raise FollowUpRefused(f"this worker knows no snapshot follow-up named {then['name']!r}")
            result.update(follow_up(job, snapshot, then))
        _succeed(job, result, snapshot=snapshot)


def _succeed(job: Job, result: dict, **links) -> None:
    """Inside the work's transaction: the job succeeds with it, or neither happens."""
    done = Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, started_at=job.started_at).update(
        status=Job.Status.SUCCEEDED, progress=1.0, result=result, errors=[], finished_at=timezone.now(), **links
    )
    if not done:
        raise JobLost(job.pk)


def _fail(job: Job, errors: list[dict]) -> None:
    Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING, started_at=job.started_at).update(
        status=Job.Status.FAILED, errors=errors, finished_at=timezone.now()
    )


def _error(exc: Exception) -> dict:
    if isinstance(exc, ImportRejected):
        return {"line": exc.line, "field": exc.field, "detail": f"{exc}; nothing was imported"}
    return {"line": None, "field": None, "detail": str(exc)}


def _remove_upload(job: Job) -> None:
    """Delete an uploaded file once its job is over; a file the command line named is the user's."""
    if job.upload_path and Path(job.upload_path).parent == upload_dir():
        try:
            os.unlink(job.upload_path)
        except FileNotFoundError:
            pass


class ProgressWriter:
    """Publishes a job's progress while its work runs in a transaction of its own."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        self.last_value = 0.0
        self.last_time = 0.0
        self.side = None
        main = connections["default"]
        # The job row must be committed for others to see it, and the database must allow a
        # second writer beside the work's open transaction.
        if main.vendor != "sqlite" and not main.in_atomic_block:
            self.side = main.copy()

    def update(self, fraction: float) -> None:
        if self.side is None:
            return
        fraction = min(max(fraction, 0.0), 0.99)  # 1.0 is written with the result
        now = time.monotonic()
        if fraction - self.last_value < PROGRESS_STEP or now - self.last_time < PROGRESS_INTERVAL_SECONDS:
            return
        self.last_value, self.last_time = fraction, now
        table = self.side.ops.quote_name(Job._meta.db_table)
        with self.side.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET progress = %s WHERE id = %s AND status = %s",  # noqa: S608 (a model's table name)
                [fraction, self.job_id, Job.Status.RUNNING],
            )

    def close(self) -> None:
        if self.side is not None:
            self.side.close()
            self.side = None
