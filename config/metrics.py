"""Prometheus metrics: what the operator watches.

Request latencies are measured in each web process (RequestMetricsMiddleware). With several
web worker processes, set PROMETHEUS_MULTIPROC_DIR (prometheus_client's own variable) to an empty
folder so that the scrape sums every worker. Everything else (votes, the annotation queue, runs,
the active version, the broker's queues) is read from the database and the broker at scrape time,
so every process answers the same and nothing is lost when a process restarts.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

REQUEST_LATENCY = Histogram(
    "prospect_http_request_duration_seconds",
    "Time from request to response in the web app, by route pattern.",
    ["method", "route", "status"],
)


class ProspectCollector:
    """Reads the loop's state at scrape time (a handful of indexed counts)."""

    def describe(self):
        # Registering must not query the database (prometheus_client calls collect() otherwise).
        return []

    def collect(self):
        from django.db.models import Count, F, Sum

        from feedback.models import Generation, Vote
        from training.models import ModelVersion, TrainingRun

        votes = GaugeMetricFamily(
            "prospect_votes", "Votes received (kept, i.e. not undone), by label.", labels=["label"]
        )
        counts = dict(Vote.objects.values_list("desirable").annotate(n=Count("id")).values_list("desirable", "n"))
        votes.add_metric(["desirable"], counts.get(True, 0))
        votes.add_metric(["undesirable"], counts.get(False, 0))
        yield votes

        yield GaugeMetricFamily(
            "prospect_annotation_queue_depth",
            "Outputs waiting for their first vote.",
            value=Generation.objects.filter(votes__isnull=True).count(),
        )

        runs = GaugeMetricFamily("prospect_training_runs", "Training runs, by status.", labels=["status"])
        by_status = dict(TrainingRun.objects.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
        for status in TrainingRun.Status.values:
            runs.add_metric([status], by_status.get(status, 0))
        yield runs

        durations = GaugeMetricFamily(
            "prospect_training_run_duration_seconds_sum",
            "Total wall time of finished runs, by outcome (divide by the count).",
            labels=["status"],
        )
        finished = (
            TrainingRun.objects.filter(started_at__isnull=False, finished_at__isnull=False)
            .values_list("status")
            .annotate(total=Sum(F("finished_at") - F("started_at")))
        )
        for status, total in finished:
            durations.add_metric([status], total.total_seconds() if total is not None else 0.0)
        yield durations

        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).values_list("pk", "name").first()
        version = GaugeMetricFamily(
            "prospect_active_model_version", "The version serving (its id as the value).", labels=["name"]
        )
        if active is not None:
            version.add_metric([active[1]], active[0])
        yield version

        depth = broker_queue_depths()
        if depth:
            queue = GaugeMetricFamily(
                "prospect_broker_queue_depth", "Tasks waiting in the broker, by queue.", labels=["queue"]
            )
            for name, length in depth.items():
                queue.add_metric([name], length)
            yield queue


def broker_queue_depths() -> dict[str, int]:
    """Messages waiting in each of this installation's queues (Redis only; {} otherwise)."""
    from config.celery import app

    if not str(app.conf.broker_url).startswith("redis"):
        return {}
    queues = [q.name for q in (app.conf.task_queues or [])] or sorted(
        {app.conf.task_default_queue, *(route["queue"] for route in (app.conf.task_routes or {}).values())}
    )
    try:
        with app.connection_for_read() as connection:
            client = connection.default_channel.client
            return {name: client.llen(name) for name in queues}
    except Exception:  # the broker being down is /readyz's business, not a failed scrape
        return {}


PROSPECT_COLLECTOR = ProspectCollector()
REGISTRY.register(PROSPECT_COLLECTOR)


def render_metrics() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(PROSPECT_COLLECTOR)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
