"""The Celery app of Prospect.

Broker
    ``CELERY_BROKER_URL`` when set (production: set it, e.g. ``redis://redis:6379/0``, so web,
    workers and beat can never disagree). When it is unset, Redis at ``REDIS_URL`` is used if it
    answers a PING at start-up; otherwise — a laptop with no Redis at all — the embedded default
    is kombu's *filesystem* transport: messages are files under ``$PROSPECT_DATA_DIR/broker/``,
    shared by every process on the machine. It needs no server and survives restarts; it is for
    one machine only (no remote workers). The choice is made here, when the app's configuration
    is first read (sending a task, starting a worker), never when the settings are imported.

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

Installations
    Two installations may share one Redis database. Every broker key of this one (queue lists,
    bindings, unacked messages, pub/sub) is under ``prospect.<PROSPECT_INSTALLATION_ID>.``, and
    every task message carries the installation id in a header, which the task checks before it
    runs (InstallationTask): a message of another installation is refused, never executed.

Reliability
    Late ack + ``task_reject_on_worker_lost`` + prefetch 1 mean a message leaves the broker only
    after its task returned. The Redis visibility timeout (settings.BROKER_VISIBILITY_TIMEOUT: the
    longest run — training, adapter merge and gate — plus 1 h) is longer than any run, so a slow
    run is not re-delivered while it trains. Every task has soft and hard time limits (the
    prefork pool enforces them; ``-P solo`` cannot, and there the run's own time limit and the
    gate's timeouts bound the work). When a message is
    delivered again anyway (worker killed), the task's database status guard makes it a no-op,
    and the reaper (on every worker start, and every minute from beat) marks runs whose worker
    died as failed and kills their leftover training processes.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

from celery import Celery, Task
from celery.signals import beat_init, before_task_publish, worker_ready
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

logger = logging.getLogger(__name__)
INSTALLATION_HEADER = "prospect_installation"


class InstallationTask(Task):
    """Runs a task only when its message was sent by this installation (the header says which)."""

    def __call__(self, *args, **kwargs):
        if not self.request.called_directly:
            sent_by = self.request.get(INSTALLATION_HEADER)
            if sent_by != settings.PROSPECT_INSTALLATION_ID:
                logger.error(
                    "refused task %s[%s]: sent by installation %r, this is %r",
                    self.name,
                    self.request.id,
                    sent_by,
                    settings.PROSPECT_INSTALLATION_ID,
                )
                return None
        return super().__call__(*args, **kwargs)


app = Celery("prospect", task_cls=InstallationTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@dataclass(frozen=True)
class BrokerChoice:
    url: str
    kind: str  # "configured" (CELERY_BROKER_URL), "redis" (REDIS_URL answered) or "filesystem"
    transport_options: dict


def redis_answers(url: str, timeout: float = 0.3) -> bool:
    """True when something accepts a TCP connection and answers PING at the Redis URL."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # "-NOAUTH" still means a Redis is there (the URL's password is used by the real client).
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def installation_key_prefix() -> str:
    return f"prospect.{settings.PROSPECT_INSTALLATION_ID}."


def broker_transport_options() -> dict:
    """Options of a network broker (Redis)."""
    return {
        # An unacknowledged message (late ack: a GPU task acks when it ends) goes back to the
        # queue after this long. It exceeds the longest run (training + merge + gate, see
        # settings), or a second worker would start the same run while the first still trains it.
        "visibility_timeout": settings.BROKER_VISIBILITY_TIMEOUT,
        "socket_connect_timeout": 5,
        # Every key (queues, bindings, unacked messages, pub/sub channels) under this
        # installation's prefix: two installations on one Redis never see each other's tasks.
        "global_keyprefix": installation_key_prefix(),
    }


def choose_broker() -> BrokerChoice:
    """CELERY_BROKER_URL when set; else Redis at REDIS_URL if it answers; else the filesystem."""
    if settings.CELERY_BROKER_URL:
        url, kind = settings.CELERY_BROKER_URL, "configured"
    elif redis_answers(settings.REDIS_URL):
        url, kind = settings.REDIS_URL, "redis"
    else:
        url, kind = "filesystem://", "filesystem"
    if url.startswith("filesystem://"):
        # Producers and consumers on this machine share one folder: messages are files in it.
        folders = {name: settings.PROSPECT_BROKER_DIR / name for name in ("queue", "processed", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "store_processed": False,
        }
    else:
        options = broker_transport_options()
    return BrokerChoice(url, kind, options)


@app.on_after_configure.connect
def _use_chosen_broker(sender, source, **kwargs) -> None:
    choice = choose_broker()
    source.broker_url = choice.url
    source.broker_transport_options = choice.transport_options
    source.prospect_broker_kind = choice.kind


@before_task_publish.connect
def _stamp_installation(sender=None, headers=None, **kwargs) -> None:
    # Every message this process sends (web, workers, beat) names the installation that sent it.
    if headers is not None:
        headers[INSTALLATION_HEADER] = settings.PROSPECT_INSTALLATION_ID


@worker_ready.connect
def _reap_runs_of_dead_workers(sender=None, **kwargs) -> None:
    # A worker that starts after a crash (same host) finds the crashed worker's run still marked
    # running: mark it failed right away instead of waiting for the periodic reaper. (Imported
    # here: the app registry is not ready when this module is imported.)
    from training.runs import reap_orphaned_runs

    reap_orphaned_runs()


@beat_init.connect
def _install_periodic_tasks(sender=None, **kwargs) -> None:
    # The retrain check and the reaper exist as soon as beat runs; admin edits are kept.
    from training.scheduler import install_schedule

    install_schedule()
