"""The retraining policy: when to cut a snapshot and train, and the beat schedule that asks.

Beat (django-celery-beat's DatabaseScheduler, so the schedule is editable in the admin under
"Periodic tasks") sends `training.tasks.maybe_retrain` every PROSPECT_RETRAIN_CHECK_SECONDS and
`training.tasks.reap_orphaned_runs` every minute; install_schedule() creates both, idempotently.
Beat calls it when it starts (config/celery.py, beat_init), so a fresh database gets the
schedule without a manual step, and an admin's later edits are kept.

The decision only reads the database (votes newer than the latest snapshot's last_vote_id), so
votes that arrived while Redis or the workers were down are counted at the next check: nothing
is lost, scheduling just catches up.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import TrainingPolicy, TrainingRun

logger = logging.getLogger(__name__)

RETRAIN_TASK_NAME = "prospect: retrain when enough new votes"
REAPER_TASK_NAME = "prospect: fail runs whose worker died"
REAPER_INTERVAL_SECONDS = 60


def retrain_decision(policy: TrainingPolicy, now=None) -> tuple[bool, str]:
    """(should a run start now, why / why not) — the policy's rules, read-only."""
    from training.selectors import new_votes_since_last_snapshot
    from training.services import ACTIVE_RUN_STATUSES

    now = now or timezone.now()
    if not policy.enabled:
        return False, "automatic retraining is disabled"
    active = TrainingRun.objects.filter(status__in=ACTIVE_RUN_STATUSES).order_by("pk").first()
    if active is not None:
        return False, f"run {active.pk} is {active.status}"
    new_votes = new_votes_since_last_snapshot()
    if new_votes < policy.min_new_votes:
        return False, f"{new_votes} new votes, waiting for {policy.min_new_votes}"
    last = TrainingRun.objects.order_by("-created_at").first()
    if last is not None and policy.cooldown_seconds:
        ready_at = last.created_at + timedelta(seconds=policy.cooldown_seconds)
        if now < ready_at:
            return False, f"cooling down until {ready_at.isoformat()}"
    return True, f"{new_votes} new votes since the last snapshot"


def maybe_retrain(now=None) -> TrainingRun | None:
    """Start a run (fresh snapshot + start_run) if the policy says so; re-send undelivered runs.

    The policy row is locked for the decision so two concurrent checks (two beats, a slow
    worker) cannot both start a run.
    """
    from feedback.services import SnapshotRefused
    from training.services import dispatch_pending_runs, get_policy, start_run

    # Runs requested while the broker was down reach it now.
    dispatch_pending_runs()
    get_policy()  # make sure the row exists before locking it
    with transaction.atomic():
        policy = TrainingPolicy.objects.select_for_update().get(pk=1)
        start, why = retrain_decision(policy, now)
        if not start:
            logger.info("no retraining: %s", why)
            return None
        logger.info("retraining: %s", why)
        try:
            return start_run()
        except SnapshotRefused as exc:
            # e.g. every new vote says "good": no KTO dataset yet. Checked again next time.
            logger.warning("no retraining: %s", exc)
            return None


def install_schedule(check_seconds: int | None = None) -> None:
    """Create (or update the interval of) the periodic tasks beat runs. Idempotent.

    An admin may edit or disable them afterwards in the admin; calling this again only resets
    the retrain interval when `check_seconds` is given explicitly.
    """
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    def interval(seconds: int) -> IntervalSchedule:
        schedule, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
        return schedule

    with transaction.atomic():
        retrain, created = PeriodicTask.objects.get_or_create(
            name=RETRAIN_TASK_NAME,
            defaults={
                "task": "training.tasks.maybe_retrain",
                "interval": interval(check_seconds or settings.PROSPECT_RETRAIN_CHECK_SECONDS),
                "queue": "default",
            },
        )
        if not created and check_seconds:
            retrain.interval = interval(check_seconds)
            retrain.enabled = True
            retrain.save()
        PeriodicTask.objects.get_or_create(
            name=REAPER_TASK_NAME,
            defaults={
                "task": "training.tasks.reap_orphaned_runs",
                "interval": interval(REAPER_INTERVAL_SECONDS),
                "queue": "default",
            },
        )
