"""Sending work to the Celery workers by task name.

The layers below training.tasks (runs, scheduler, commands) send messages through here instead of
importing the task functions, so that tasks can call down into them without an import circle.
Routing (which queue) is the settings' CELERY_TASK_ROUTES, applied by name as for any task.
"""

from __future__ import annotations

from celery import current_app

RUN_TRAINING = "training.tasks.run_training"
EVALUATE_CANDIDATE = "training.tasks.evaluate_candidate"
MAYBE_RETRAIN = "training.tasks.maybe_retrain"
REAP_ORPHANED_RUNS = "training.tasks.reap_orphaned_runs"
CHECK_WAITING_GATES = "training.tasks.check_waiting_gates"
FILL_QUEUE = "training.fill_queue"


def send_run_training(run_id: int) -> None:
    """Queue the training of a run; raises the broker's error when it cannot be reached (no retry)."""
    current_app.send_task(RUN_TRAINING, args=[run_id], retry=False)


def send_fill_queue(n: int, *, temperature: float = 1.0, top_up: bool = False, project_id: int | None = None) -> None:
    """Queue sampling `n` outputs of the project's active version for its annotation queue."""
    current_app.send_task(
        FILL_QUEUE, kwargs={"n": n, "temperature": temperature, "top_up": top_up, "project_id": project_id}
    )
