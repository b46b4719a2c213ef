"""Small helpers shared by the whole suite (and the benchmarks): ports, polling, the workers' view of
the test database, this process's Celery producer."""

from __future__ import annotations

import os
import time
from pathlib import Path

from training.kto.distributed import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
# The tests' own Redis database (flushed by the tests that use it).
LOOP_REDIS_URL = os.environ.get("PROSPECT_LOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/2")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25, on_timeout=None):
    """Poll until predicate() returns a truthy value; fail with `what` (and extra context) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")


def database_url_for_workers() -> str:
    """A DATABASE_URL naming the test database this session created (workers are separate processes)."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    if connection.vendor == "postgresql":
        auth = params["USER"] or ""
        if params.get("PASSWORD"):
            auth += f":{params['PASSWORD']}"
        host = params.get("HOST") or "127.0.0.1"
        port = params.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{params['NAME']}"
    raise RuntimeError(f"no worker DATABASE_URL for {connection.vendor}")


def point_celery_at(broker_url: str) -> None:
    """Make this process (the 'web' side: start_run, delay) send to `broker_url`."""
    from kombu import pools

    from config.celery import app, broker_transport_options

    app.conf.broker_url = broker_url
    # Redis needs this installation's key prefix; the filesystem transport ignores those options.
    app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **broker_transport_options()}
    # Drop cached connections and producers made for the previous URL (kombu keeps a global
    # registry of pools; reset() closes and forgets them all).
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()
