"""The scheduler: beat's periodic check that starts a run when the policy says so, and the schedule.

Beat (django-celery-beat's DatabaseScheduler, so the schedule is editable in the admin under
"Periodic tasks") sends `training.tasks.maybe_retrain` every PROSPECT_RETRAIN_CHECK_SECONDS,
`training.tasks.check_waiting_gates` (candidates whose judges collect evidence) every
PROSPECT_GATE_CHECK_SECONDS and `training.tasks.reap_orphaned_runs` every minute;
install_schedule() creates them, idempotently.
Beat calls it when it starts (config/celery.py, beat_init), so a fresh database gets the
schedule without a manual step, and an admin's later edits are kept.

The decision itself is training.policy.retrain_decision (read-only); this module acts on it.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from feedback.services import SnapshotRefused
from feedback.services.jobs import dispatch_pending_jobs
from projects.models import Project
from training import dispatch
from training.models import TrainingPolicy, TrainingRun
from training.policy import get_policy, retrain_decision
from training.runs import dispatch_pending_runs, start_run

logger = logging.getLogger(__name__)

RETRAIN_TASK_NAME = "prospect: retrain when enough new votes"
REAPER_TASK_NAME = "prospect: fail runs whose worker died"
GATE_CHECK_TASK_NAME = "prospect: ask the gate's waiting judges again"
REAPER_INTERVAL_SECONDS = 60


def maybe_retrain(now=None) -> list[TrainingRun]:
    """For every project, start a run (fresh snapshot + start_run) if its policy says so; re-send
    undelivered runs. Returns the runs started.

    Each project's policy row is locked for its decision so two concurrent checks (two beats, a
    slow worker) cannot both start a run for it.
    """
    # Runs (and import or snapshot jobs) requested while the broker was down reach it now.
    dispatch_pending_runs()
    dispatch_pending_jobs()
    started = []
    for project in Project.objects.order_by("pk"):
        run = maybe_retrain_project(project, now)
        if run is not None:
            started.append(run)
    return started


def maybe_retrain_project(project: Project, now=None) -> TrainingRun | None:
    policy_id = get_policy(project).pk  # make sure the row exists before locking it
    with transaction.atomic():
        policy = TrainingPolicy.objects.select_for_update().select_related("project").get(pk=policy_id)
        start, why = retrain_decision(policy, now)
        if not start:
            logger.info("%s: no retraining: %s", project.name, why)
            return None
        logger.info("%s: retraining: %s", project.name, why)
        try:
            return start_run(project=project)
        except SnapshotRefused as exc:
            # e.g. every new vote says "good": no KTO dataset yet. Checked again next time.
            logger.warning("%s: no retraining: %s", project.name, exc)
            return None


def install_schedule(check_seconds: int | None = None) -> None:
    """Create (or update the interval of) the periodic tasks beat runs. Idempotent.

    An admin may edit or disable them afterwards in the admin; calling this again only resets
    the retrain interval when `check_seconds` is given explicitly.
    """

    def interval(seconds: int) -> IntervalSchedule:
        schedule, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        return schedule

    with transaction.atomic():
        retrain, created = PeriodicTask.objects.get_or_create(
            name=RETRAIN_TASK_NAME,
            defaults={
                "task": dispatch.MAYBE_RETRAIN,
                "interval": interval(check_seconds or settings.PROSPECT_RETRAIN_CHECK_SECONDS),
                "queue": "default",
            },
        )
        if not created and check_seconds:
            retrain.interval = interval(check_seconds)
            retrain.enabled = True
            retrain.save()
        PeriodicTask.objects.get_or_create(
            name=GATE_CHECK_TASK_NAME,
            defaults={
                "task": dispatch.CHECK_WAITING_GATES,
                "interval": interval(settings.PROSPECT_GATE_CHECK_SECONDS),
                "queue": "default",
            },
        )
        PeriodicTask.objects.get_or_create(
            name=REAPER_TASK_NAME,
            defaults={
                "task": dispatch.REAP_ORPHANED_RUNS,
                "interval": interval(REAPER_INTERVAL_SECONDS),
                "queue": "default",
            },
        )
