"""Reads of the training loop (no writes here: see training.runs and training.registry).

Public API (a contract for views, commands and tasks):
    active_version(project=None)  -> ModelVersion | None
    run_list(limit=50, project=None) -> list[TrainingRun]
    version_list(project=None)    -> list[ModelVersion]
    run_progress(run)             -> dict   (what the run page polls)
    new_votes_since_last_trained_snapshot(project=None) -> int
    active_run(project=None)      -> TrainingRun | None  (the oldest queued or running run)
project: a Project, its name, or None for the default project (projects.selectors.resolve_project).
"""

from __future__ import annotations

from django.db.models import QuerySet

from feedback.models import DatasetSnapshot, Vote
from projects.selectors import resolve_project
from training.models import ACTIVE_RUN_STATUSES, ModelVersion, TrainingRun

# The per-step metrics the run page charts, in the engine's metrics.jsonl names.
CHART_KEYS = ("loss", "z0", "reward_desirable", "reward_undesirable", "reward_accuracy")


def active_version(project=None) -> ModelVersion | None:
    """The project's one active model version (the database guarantees at most one), or None."""
    return ModelVersion.objects.filter(project=resolve_project(project), status=ModelVersion.Status.ACTIVE).first()


def run_list(limit: int = 50, project=None) -> list[TrainingRun]:
    """The latest runs, newest first, with their snapshot, base version and produced version."""
    return list(
        TrainingRun.objects.filter(project=resolve_project(project))
        .select_related("snapshot", "base_version", "produced_version", "requested_by")
        .order_by("-created_at")[:limit]
    )


def version_list(project=None) -> QuerySet[ModelVersion]:
    """All model versions, newest first (metrics side by side on the Models page)."""
    return (
        ModelVersion.objects.filter(project=resolve_project(project))
        .select_related("parent", "created_by_run")
        .order_by("-created_at")
    )


def run_progress(run: TrainingRun) -> dict:
    """A JSON-ready picture of a run for its page, which polls it while the run is not finished.

    Keys:
      id, status ("queued" | "running" | "succeeded" | "failed" | "cancelled"), finished (bool),
      progress (0..1: step / total steps; 1.0 once succeeded), step, total_steps (int | None),
      metrics: {"step": [...], "loss": [...], "z0": [...], "reward_desirable": [...],
                "reward_undesirable": [...], "reward_accuracy": [...]}   (parallel lists, ≤ 500 points,
                read by the runner from the run's metrics.jsonl),
      last_metrics (the last metrics.jsonl row as written by the engine, or {}),
      log_tail (str), error (str), exit_code (int | None),
      created_at, started_at, finished_at (ISO 8601 or None),
      version: None, or {"id", "name", "status", "status_reason", "evaluation_state", "metrics"}
               for the version this run produced (the gate's verdict is there).
    """
    run = TrainingRun.objects.select_related("produced_version").get(pk=run.pk)
    rows = run.metrics if isinstance(run.metrics, list) else []
    series: dict[str, list] = {"step": [row.get("step") for row in rows]}
    for key in CHART_KEYS:
        series[key] = [row.get(key) for row in rows]
    version = getattr(run, "produced_version", None)
    progress = 1.0 if run.status == TrainingRun.Status.SUCCEEDED else max(0.0, min(1.0, run.progress))
    return {
        "id": run.pk,
        "status": run.status,
        "finished": run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING),
        "progress": progress,
        "step": run.current_step,
        "total_steps": run.total_steps,
        "metrics": series,
        "last_metrics": rows[-1] if rows else {},
        "log_tail": run.log_tail,
        "error": run.error,
        "exit_code": run.exit_code,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "version": None
        if version is None
        else {
            "id": version.pk,
            "name": version.name,
            "status": version.status,
            "status_reason": version.status_reason,
            "evaluation_state": version.evaluation_state,
            "metrics": version.metrics,
        },
    }


# The runs whose snapshot has used up its votes: a failed or cancelled run trained nothing that
# stays, so its snapshot's votes still count as new for the next automatic run.
VOTE_CONSUMING_RUN_STATUSES = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING, TrainingRun.Status.SUCCEEDED)


def new_votes_since_last_trained_snapshot(project=None) -> int:
    """The project's votes with an id above the last_vote_id of the latest snapshot that a queued,
    running or succeeded run trains on (all its votes when there is none)."""
    project = resolve_project(project)
    latest = (
        DatasetSnapshot.objects.filter(project=project, training_runs__status__in=VOTE_CONSUMING_RUN_STATUSES)
        .order_by("-last_vote_id")
        .first()
    )
    return Vote.objects.filter(generation__project=project, pk__gt=latest.last_vote_id if latest else 0).count()


def active_run(project=None) -> TrainingRun | None:
    """The oldest run that is queued or running, or None."""
    return (
        TrainingRun.objects.filter(project=resolve_project(project), status__in=ACTIVE_RUN_STATUSES)
        .order_by("pk")
        .first()
    )


def _iso(value) -> str | None:
    return value.isoformat() if value else None
