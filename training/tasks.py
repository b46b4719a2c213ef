"""Celery tasks of the training loop: thin entry points that load a row by id and call down.

Nothing imports this module but Celery (autodiscovery) and the top-level commands; the layers
below send these tasks by name through training.dispatch. Queues (CELERY_TASK_ROUTES in
config/settings.py): run_training, evaluate_candidate and fill_queue go to `gpu`; maybe_retrain,
reap_orphaned_runs and check_waiting_gates to `default`.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from projects.models import Project
from training import dispatch, gate, runner, runs, scheduler, serving
from training.models import ModelVersion


# Time limits (the default ones, CELERY_TASK_*_TIME_LIMIT, bound the short tasks): a run's task
# may take the whole run plus the merge and the gate (see config/settings.py).
@shared_task(
    name=dispatch.RUN_TRAINING,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.RUN_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.RUN_TASK_TIME_LIMIT,
)
def run_training(run_id: int) -> None:
    """Train a queued run, then gate its candidate. A run that is not queued is left alone."""
    runner.execute_run(run_id)


@shared_task(
    name=dispatch.EVALUATE_CANDIDATE,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.EVALUATE_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.EVALUATE_TASK_TIME_LIMIT,
)
def evaluate_candidate(version_id: int) -> None:
    """(Re-)run the evaluation gate for a candidate version whose gate is pending."""
    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None:
        gate.evaluate_candidate(version)


@shared_task(name=dispatch.MAYBE_RETRAIN)
def maybe_retrain() -> list[int]:
    """Beat's periodic check: retrain each project that got enough new votes (see training.scheduler)."""
    return [run.pk for run in scheduler.maybe_retrain()]


@shared_task(name=dispatch.CHECK_WAITING_GATES)
def check_waiting_gates() -> list[int]:
    """Beat's periodic check: ask the judges of candidates collecting evidence again (see training.gate)."""
    return gate.check_waiting_gates()


@shared_task(name=dispatch.REAP_ORPHANED_RUNS)
def reap_orphaned_runs() -> list[int]:
    """Mark failed the running runs whose worker died (see training.runs.reap_orphaned_runs)."""
    return runs.reap_orphaned_runs()


@shared_task(name=dispatch.FILL_QUEUE, acks_late=True)
def fill_queue(n: int = 16, temperature: float = 1.0, top_up: bool = False, project_id: int | None = None) -> dict:
    """Put `n` fresh samples of the project's active model into its annotation queue (None: the
    default project); with top_up, only as many as bring the unrated outputs up to `n` (what the
    demo's periodic refill uses). The model is loaded once per worker process and project, and
    follows promotions (see training.serving)."""
    project = Project.objects.get(pk=project_id) if project_id is not None else None
    if top_up:
        generations = serving.top_up_annotation_queue(n, project=project, temperature=temperature)
    else:
        generations = serving.fill_annotation_queue(n, project=project, temperature=temperature)
    return {"generations": len(generations), "generation_ids": [g.pk for g in generations]}
