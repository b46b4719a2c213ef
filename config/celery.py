"""The Celery app of Prospect.

Broker
    ``CELERY_BROKER_URL`` when set (production: set it, e.g. ``redis://redis:6379/0``, so web,
    workers and beat can never disagree). When it is unset, Redis at ``REDIS_URL`` is used if it
    answers a PING at start-up; otherwise — a laptop with no Redis at all — the embedded default
    is kombu's *filesystem* transport: messages are files under ``$PROSPECT_DATA_DIR/broker/``,
    shared by every process on the machine. It needs no server and survives restarts; it is for
    one machine only (no remote workers). See config/settings_loop.py.

Queues
    ``default``: CPU work (snapshots, scheduling, reaping dead runs, bookkeeping).
    ``gpu``: training, evaluation and generation (routes in ``CELERY_TASK_ROUTES``).

Workers
    GPU host, one per GPU set (one task at a time, late ack; the run's own subprocess does the
    heavy lifting, never the worker process)::

        celery -A config worker -Q gpu -P solo -c 1 --prefetch-multiplier 1 -n gpu@%h

    CPU work and the scheduler::

        celery -A config worker -Q default -c 2 -n default@%h
        celery -A config beat -S django_celery_beat.schedulers:DatabaseScheduler

    On a laptop one process can do both queues plus beat::

        celery -A config worker -Q default,gpu -P solo -c 1 --prefetch-multiplier 1 -B

Reliability
    Late ack + ``task_reject_on_worker_lost`` + prefetch 1 mean a message leaves the broker only
    after its task returned. The Redis visibility timeout (``PROSPECT_MAX_RUN_SECONDS`` + 1 h) is
    longer than any run, so a slow run is not re-delivered while it trains. When a message is
    delivered again anyway (worker killed), the task's database status guard makes it a no-op,
    and the reaper (on every worker start, and every minute from beat) marks runs whose worker
    died as failed and kills their leftover training processes.
"""
from __future__ import annotations

import os

from celery import Celery
from celery.signals import beat_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("prospect")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _reap_runs_of_dead_workers(sender=None, **kwargs) -> None:
    # A worker that starts after a crash (same host) finds the crashed worker's run still marked
    # running: mark it failed right away instead of waiting for the periodic reaper.
    from training.services import reap_orphaned_runs

    reap_orphaned_runs()


@beat_init.connect
def _install_periodic_tasks(sender=None, **kwargs) -> None:
    # The retrain check and the reaper exist as soon as beat runs; admin edits are kept.
    from training.policy import install_schedule

    install_schedule()
