"""Small helpers shared by the whole suite (and the benchmarks): ports, polling, the workers' view of
the test database, this process's Celery producer."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from training.kto.distributed import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
# pytest-xdist's worker ("gw0", "gw1", ...; empty when the suite runs in one process).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
XDIST_INDEX = int(XDIST_WORKER[2:]) if XDIST_WORKER.startswith("gw") else 0


def _per_worker_redis_url(base: str) -> str:
    """`base` with its database number moved up by the xdist worker's index (db 2 -> 2, 3, ...)."""
    head, _, database = base.rpartition("/")
    number = int(database or 0) + XDIST_INDEX
    if number > 13:  # 14 and 15 are the side runs' and CI's (REDIS_URL)
        raise RuntimeError(f"no Redis database left for pytest-xdist worker {XDIST_WORKER} ({base}): use fewer workers")
    return f"{head}/{number}"


# The tests' own Redis database (flushed by the tests that use it): one per pytest-xdist worker, so
# one worker's flush never empties the queue another worker's test is reading.
LOOP_REDIS_URL = _per_worker_redis_url(os.environ.get("PROSPECT_LOOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/2"))


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


class InProcessServing(httpx.BaseTransport):
    """An httpx transport that hands the web app's serving calls to the serving process's own WSGI
    application (training.serving_http) in this test process: the real serving code, without a
    socket or a second process. The live tests (tests/training/test_openai_api_live.py) use a
    real serving process; this keeps the many in-process API tests fast and inside their test
    transaction, as Django's test client does (it, too, keeps close_old_connections from closing the
    connection mid-transaction)."""

    def __init__(self):
        from training.serving_http import application

        self._wsgi = httpx.WSGITransport(app=application())

    def handle_request(self, request):
        from django.core.signals import request_finished, request_started
        from django.db import close_old_connections

        # Reconnect only what was connected: a caller (e.g. the schema fuzz test) may have
        # disconnected them itself for the whole test.
        was_started = request_started.disconnect(close_old_connections)
        was_finished = request_finished.disconnect(close_old_connections)
        try:
            response = self._wsgi.handle_request(request)
            # Read and close here: closing the WSGI response sends request_finished.
            content = response.read()
            response.close()
            return httpx.Response(response.status_code, headers=response.headers, content=content)
        finally:
            if was_started:
                request_started.connect(close_old_connections)
            if was_finished:
                request_finished.connect(close_old_connections)

    def close(self):
        self._wsgi.close()
