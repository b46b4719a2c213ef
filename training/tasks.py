"""Celery tasks of the training loop: each loads a row by id and calls a service, nothing more.

Queues (routes in config/settings_loop.py): run_training and evaluate_candidate go to `gpu`;
maybe_retrain and reap_orphaned_runs to `default`.
"""
from __future__ import annotations

from celery import shared_task

# The inference tasks (fill_queue, on the gpu queue) live in 4b's module; importing it here
# registers them with every worker through autodiscovery of training.tasks.
from training import tasks_inference  # noqa: F401


@shared_task(name="training.tasks.run_training", acks_late=True, reject_on_worker_lost=True)
def run_training(run_id: int) -> None:
    """Train a queued run, then gate its candidate. A run that is not queued is left alone."""
    from training.runner import execute_run

    execute_run(run_id)


@shared_task(name="training.tasks.evaluate_candidate", acks_late=True, reject_on_worker_lost=True)
def evaluate_candidate(version_id: int) -> None:
    """(Re-)run the evaluation gate for a candidate version whose gate is pending."""
    from training.gate import evaluate_candidate as run_gate
    from training.models import ModelVersion

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is not None:
        run_gate(version)


@shared_task(name="training.tasks.maybe_retrain")
def maybe_retrain() -> int | None:
    """Beat's periodic check: retrain when enough new votes arrived (see training.policy)."""
    from training.policy import maybe_retrain as check_policy

    run = check_policy()
    return run.pk if run is not None else None


@shared_task(name="training.tasks.reap_orphaned_runs")
def reap_orphaned_runs() -> list[int]:
    """Mark failed the running runs whose worker died (see training.services.reap_orphaned_runs)."""
    from training.services import reap_orphaned_runs as reap

    return reap()
