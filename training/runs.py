"""Training runs: create one (with its snapshot), send it to a GPU worker, cancel it, reap it.

Every state change of a run that is not its own training process's goes through here, inside a
transaction, with a conditional UPDATE where two processes could race (two workers, a worker and
the web's cancel button, the reaper). The worker side of a run (claim, supervise, finish) is
training.runner.

Public API (views, commands and the layers above call these; the signatures are a contract):
    start_run(*, snapshot=None, config=None, base_version=None, requested_by=None) -> TrainingRun
    queue_run_after_snapshot(*, config=None, base_version=None, requested_by=None) -> Job
    cancel_run(run)                   -> None
    dispatch_pending_runs()           -> list[int]
    reap_orphaned_runs()              -> list[int]
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from feedback.models import Job
from feedback.services import create_snapshot
from feedback.services.jobs import FollowUpRefused, create_snapshot_job
from feedback.services.snapshots import snapshot_files_removed_on_error
from projects.selectors import resolve_project
from training import dispatch
from training.models import ACTIVE_RUN_STATUSES, ModelVersion, TrainingPolicy, TrainingRun
from training.policy import resolve_training_config
from training.processes import kill_run_processes, worker_alive
from training.registry import ensure_base_version
from training.selectors import active_version

logger = logging.getLogger(__name__)


# The snapshot job's follow-up (feedback.services.jobs) that starts the run queued by "retrain now".
RUN_AFTER_SNAPSHOT = "training.start_run"


def _snapshot_options(config: dict) -> dict:
    """create_snapshot's arguments for a run with this (resolved) config."""
    manual = None
    if config["lambda_mode"] == TrainingPolicy.LambdaMode.MANUAL:
        manual = (config["desirable_weight"], config["undesirable_weight"])
    return {
        "holdout": config["holdout"],
        "target_ratio": config["target_ratio"],
        "mode": "downside_first" if config["lambda_mode"] == TrainingPolicy.LambdaMode.DOWNSIDE_FIRST else "auto",
        "manual_weights": manual,
        "seed": config["seed"],
    }


def _create_snapshot_for(config: dict, project):
    return create_snapshot(**_snapshot_options(config), project=project)


def _base_version_for(base_version, config: dict, project):
    """The version a run trains from: the one asked for, else the active one, else the configured base model."""
    if base_version is None:
        base_version = active_version(project)
    if base_version is None:
        if not config["base_model"]:
            raise ValidationError(
                {
                    "base_model": "no model version is active and no base model is configured "
                    "(set PROSPECT_BASE_MODEL or the training policy's base model)"
                }
            )
        base_version = ensure_base_version(config["base_model"], project=project)
    return base_version


def _refuse_other_projects_rows(project, **rows) -> None:
    for what, row in rows.items():
        if row is not None and row.project_id != project.pk:
            raise ValidationError({what: f"{what} {row.pk} does not exist in project {project.name}"})


def class_weights_for(snapshot, config: dict) -> tuple[float, float, str]:
    """(λ_D, λ_U, where they come from) for a run on `snapshot`: chosen here, once, and stored on the run.

    The snapshot's weights (chosen when it was cut: automatic rule or manual), unless the run's
    config asks for manual weights that differ from them: that override is recorded on the run,
    and the run page shows it beside the snapshot's.
    """
    snapshot_weights = (snapshot.desirable_weight, snapshot.undesirable_weight)
    if config["lambda_mode"] == TrainingPolicy.LambdaMode.MANUAL:
        manual = (float(config["desirable_weight"]), float(config["undesirable_weight"]))
        if manual != snapshot_weights:
            return (
                *manual,
                f"manual override of snapshot {snapshot.pk}'s λ_D={snapshot_weights[0]:.4g}, "
                f"λ_U={snapshot_weights[1]:.4g}",
            )
    return (*snapshot_weights, f"snapshot {snapshot.pk}: {snapshot.weight_rule}")


def start_run(
    *, snapshot=None, config: dict | None = None, base_version=None, requested_by=None, project=None
) -> TrainingRun:
    """Create a queued TrainingRun and send `run_training` to the gpu queue once the row is committed.

    snapshot: a feedback.DatasetSnapshot; None → a fresh one is cut now with
        feedback.services.create_snapshot (holdout, λ mode/target/manual weights and seed taken
        from the config). Its refusal (e.g. SnapshotRefused for a single-class dataset) propagates.
        The run's λ_D / λ_U are the snapshot's, or the config's manual weights (class_weights_for).
    config: overrides of default_training_config() (validated; ValidationError names the field).
    base_version: the ModelVersion to train from; None → the active version, or — when nothing
        is active yet — ensure_base_version(config["base_model"]). ValidationError when there is
        neither an active version nor a base model configured.
    requested_by: the user who asked (None for the scheduler).
    project: the project the run belongs to (None: the snapshot's, else the default project); a
        snapshot or base version of another project is refused.

    If the broker is unreachable the run is still created (queued, enqueued_at empty) and the
    periodic dispatcher sends it once the broker is back; the caller never sees a broker error.
    """
    project = resolve_project(project if project is not None else (snapshot.project if snapshot is not None else None))
    _refuse_other_projects_rows(project, snapshot=snapshot, base_version=base_version)
    resolved = resolve_training_config(config, project)
    # A snapshot cut here rolls back with the run if anything below fails: its file goes with it.
    with snapshot_files_removed_on_error() as created, transaction.atomic():
        base_version = _base_version_for(base_version, resolved, project)
        if snapshot is None:
            snapshot = _create_snapshot_for(resolved, project)
            created.append(snapshot)
        desirable_weight, undesirable_weight, weight_rule = class_weights_for(snapshot, resolved)
        run = TrainingRun.objects.create(
            project=project,
            snapshot=snapshot,
            base_version=base_version,
            config=resolved,
            desirable_weight=desirable_weight,
            undesirable_weight=undesirable_weight,
            weight_rule=weight_rule,
            status=TrainingRun.Status.QUEUED,
            requested_by=requested_by,
        )
        run_id = run.pk
        transaction.on_commit(lambda: _enqueue_run(run_id))
    return run


def queue_run_after_snapshot(*, config: dict | None = None, base_version=None, requested_by=None, project=None) -> Job:
    """Retrain now on a fresh snapshot: a snapshot job that starts the run once a worker has cut it.

    Cutting a snapshot reads every vote, too long for a web request. What can be checked now is
    (the config, the base version: ValidationError naming the field, nothing queued); the run's
    config and base version are fixed now, as the admin saw them. The job's status is the source of
    truth until the run exists: the run is created (queued, sent to the gpu queue once committed)
    in the job's own transaction, so a job delivered twice starts one run, and a refused snapshot
    (e.g. no votes) or run fails the job with its reason and starts none. The job's result then
    carries `run_id` and `run_url`.
    """
    project = resolve_project(project)
    _refuse_other_projects_rows(project, base_version=base_version)
    resolved = resolve_training_config(config, project)
    with transaction.atomic():
        base_version = _base_version_for(base_version, resolved, project)
        return create_snapshot_job(
            project=project,
            **_snapshot_options(resolved),
            user=requested_by,
            then={"name": RUN_AFTER_SNAPSHOT, "config": resolved, "base_version_id": base_version.pk},
        )


def start_run_after_snapshot(job: Job, snapshot, then: dict) -> dict:
    """The snapshot job's follow-up (inside its transaction): the run queued by queue_run_after_snapshot."""
    base_version = ModelVersion.objects.filter(pk=then["base_version_id"], project=job.project).first()
    if base_version is None:
        raise FollowUpRefused(f"the base version {then['base_version_id']} was deleted; no run was started")
    try:
        run = start_run(
            snapshot=snapshot,
            config=then["config"],
            base_version=base_version,
            requested_by=job.created_by,
            project=job.project,
        )
    except ValidationError as exc:
        raise FollowUpRefused(f"the run was refused: {'; '.join(exc.messages)}") from exc
    return {"run_id": run.pk, "run_url": reverse("training:run_detail", args=[run.pk])}


def _enqueue_run(run_id: int) -> bool:
    """Send run_training for a run; record when it reached the broker. False if the broker is down."""
    try:
        dispatch.send_run_training(run_id)
    except Exception as exc:  # kombu raises various OperationalError/ConnectionError flavours
        # Saving the run must not depend on the broker: the dispatcher re-sends it later.
        logger.warning("run %s: could not reach the broker (%s); the dispatcher will send it later", run_id, exc)
        return False
    TrainingRun.objects.filter(pk=run_id, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return True


def dispatch_pending_runs() -> list[int]:
    """Send the queued runs whose message never reached the broker; returns their ids.

    Called periodically (beat → training.tasks.maybe_retrain). A run sent twice is harmless: the
    task's status guard lets only one delivery train it.
    """
    sent = []
    pending = TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED, enqueued_at__isnull=True).order_by("pk")
    for run_id in pending.values_list("pk", flat=True):
        if _enqueue_run(run_id):
            sent.append(run_id)
    return sent


def cancel_run(run: TrainingRun) -> None:
    """Cancel a queued or running run.

    Queued: it becomes cancelled and its task, when delivered, does nothing. Running: it becomes
    cancelled in the database; the runner's monitor notices within PROSPECT_RUN_POLL_SECONDS,
    kills the training process group and records the exit code. Raises ValidationError when the
    run has already finished.
    """
    now = timezone.now()
    cancelled = TrainingRun.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES).update(
        status=TrainingRun.Status.CANCELLED, error="cancelled by an admin", finished_at=now
    )
    run.refresh_from_db()
    if not cancelled:
        raise ValidationError(f"run {run.pk} has already finished ({run.status}); nothing to cancel")


# --- Reaper ------------------------------------------------------------------------------------
def reap_orphaned_runs() -> list[int]:
    """Mark failed the running runs whose worker is gone; kill their leftover training processes.

    A run is orphaned when its worker ran on this host and that process no longer exists (the
    same pid held by a later process, e.g. in a restarted container, does not count), or
    when its heartbeat is older than PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS (any host). Runs are
    not resumed: a failed run is retried by starting a new one (its artifacts stay for
    inspection). Returns the ids of the runs marked failed.
    """
    hostname = socket.gethostname()
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS)
    reaped = []
    for run in TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING):
        reason = None
        if run.worker_hostname == hostname and run.worker_pid and not worker_alive(run.worker_pid, run.worker_start_id):
            reason = f"worker process {run.worker_pid} on {hostname} died while the run was training"
        elif (run.heartbeat_at or run.started_at or run.created_at) < stale_before:
            reason = (
                f"no heartbeat from worker {run.worker_hostname}:{run.worker_pid} for more than "
                f"{settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS}s"
            )
        if reason is None:
            continue
        marked = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.FAILED, error=reason, finished_at=now
        )
        if not marked:
            continue
        logger.warning("run %s marked failed: %s", run.pk, reason)
        reaped.append(run.pk)
        if run.worker_hostname == hostname and run.process_group_id:
            # The training tree runs in its own session and outlives its worker: stop it too.
            kill_run_processes(run.process_group_id, run.pk, run_dir=run.artifact_dir or None)
    _fail_gates_of_dead_workers(hostname)
    return reaped


def _fail_gates_of_dead_workers(hostname: str) -> None:
    """A worker that died while gating its run's candidate leaves evaluation_state 'running':
    record that the gate failed, so the Models page says so (an admin may promote by hand)."""
    evaluating = ModelVersion.objects.filter(
        evaluation_state=ModelVersion.EvaluationState.RUNNING, created_by_run__worker_hostname=hostname
    ).select_related("created_by_run")
    for version in evaluating:
        pid = version.created_by_run.worker_pid
        if pid and not worker_alive(pid, version.created_by_run.worker_start_id):
            ModelVersion.objects.filter(pk=version.pk, evaluation_state=ModelVersion.EvaluationState.RUNNING).update(
                evaluation_state=ModelVersion.EvaluationState.FAILED,
                status_reason=f"not promoted: worker process {pid} died during the evaluation gate",
            )
