"""The operator's endpoints: /readyz (can this instance serve?) and /metrics (Prometheus).

/healthz (feedback.views.healthz) is liveness only: the process answers, nothing else is touched,
so an orchestrator does not restart web processes because the database is down. /readyz checks
what a request needs and says which part failed, with 503, so a load balancer stops sending traffic.
"""

from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from config.metrics import render_metrics


def check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_broker() -> str | None:
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_serving() -> str | None:
    """The active version's weights are where serving will load them from (none active: the base model)."""
    from training.models import ModelVersion

    try:
        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if active is None:
        return None  # nothing to serve yet is a valid state of a fresh installation
    if not Path(active.artifact_path).exists():
        return f"the active version's weights are missing: {active.artifact_path}"
    return None


def check_serving_process() -> str | None:
    """The serving process (PROSPECT_SERVING_URL) answers: generate and /v1/ need it."""
    from training import serving_client

    return serving_client.check()


@require_GET
def readyz(request):
    checks = {"database": check_database(), "broker": check_broker()}
    checks["serving"] = check_serving() if checks["database"] is None else "not checked: the database is down"
    checks["serving_process"] = check_serving_process()
    failed = {name: error for name, error in checks.items() if error is not None}
    body = {"ready": not failed, "checks": {name: error or "ok" for name, error in checks.items()}}
    return JsonResponse(body, status=503 if failed else 200)


def _may_scrape(request) -> bool:
    token = settings.PROSPECT_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics(request):
    if not _may_scrape(request):
        return HttpResponse(
            "metrics: set PROSPECT_METRICS_TOKEN and send it as a Bearer token, or scrape from localhost",
            status=403,
            content_type="text/plain",
        )
    body, content_type = render_metrics()
    return HttpResponse(body, content_type=content_type)
