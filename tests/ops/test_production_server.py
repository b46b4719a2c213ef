"""The web process as shipped (granian, DEBUG off): static files served (the annotate page's keyboard script
loads in Chromium), a database outage answered as JSON 503 with Retry-After, /healthz and /readyz
telling liveness from readiness, and /metrics for the operator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.ops.production_server import PASSWORD, request, start_production_server, stop

ANNOTATOR_SETUP = f"""
from tests.feedback.helpers import add_generation, make_annotator
user = make_annotator("rater")
user.set_password({PASSWORD!r})
user.save()
add_generation()
"""
STAFF_TOKEN = """
from projects.selectors import default_project
from projects.services import create_api_key
from tests.feedback.helpers import add_generation
_, key = create_api_key(default_project(), scopes="votes:write")
print("TOKEN", key, "GENERATION", add_generation().pk)
"""


@pytest.mark.browser
def test_the_annotate_page_keeps_its_keyboard_script_with_debug_off(production_server, browser):
    production_server.shell(ANNOTATOR_SETUP)
    status, headers, body = production_server.get("/static/feedback/annotate.js")
    assert status == 200 and b"shortcuts" in body
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        failed = []
        page.on("response", lambda response: failed.append(response.url) if response.status >= 400 else None)
        page.goto(f"{production_server.url}/accounts/login/?next=/annotate/")
        page.fill("#id_username", "rater")
        page.fill("#id_password", PASSWORD)
        with page.expect_navigation():
            page.click("#login-submit")
        # annotate.js marks the page once its keyboard shortcuts are wired.
        page.wait_for_selector("body[data-shortcuts=ready]", state="attached")
        assert page.get_attribute("article.item", "data-generation-id")
        assert not failed, failed
    finally:
        context.close()


def vote(server, token: str, generation_id: int):
    body = json.dumps({"generation_id": generation_id, "desirable": True, "external_user_id": "u1"}).encode()
    return request(
        f"{server.url}/api/v1/votes/",
        data=body,
        method="POST",
        headers={"Authorization": f"Api-Key {token}", "Content-Type": "application/json"},
    )


def test_a_database_outage_is_a_json_503_with_retry_after_and_readyz_says_which(production_server):
    out = production_server.shell(STAFF_TOKEN).split()
    token, generation_id = out[out.index("TOKEN") + 1], int(out[out.index("GENERATION") + 1])
    assert production_server.get("/readyz")[0] in (200, 503)  # the broker may be absent here
    ready = json.loads(production_server.get("/readyz")[2])
    assert ready["checks"]["database"] == "ok"

    # The database becomes unreachable: its file is moved away and a directory stands in its place,
    # so opening it fails in the driver (as root, taking permissions away would not stop SQLite).
    moved = production_server.database.with_suffix(".away")
    production_server.database.rename(moved)
    production_server.database.mkdir()
    try:
        status, headers, body = vote(production_server, token, generation_id)
        assert status == 503, (status, body[:500])
        assert headers["Content-Type"].startswith("application/json")
        assert int(headers["Retry-After"]) > 0
        assert "unavailable" in json.loads(body)["detail"]
        assert production_server.get("/healthz")[0] == 200  # alive: do not restart it
        status, _, body = production_server.get("/readyz")
        assert status == 503
        checks = json.loads(body)["checks"]
        assert checks["database"] != "ok" and "OperationalError" in checks["database"]
    finally:
        production_server.database.rmdir()
        moved.rename(production_server.database)

    status, _, body = vote(production_server, token, generation_id)
    assert status in (200, 201), body
    assert "Traceback" not in production_server.log.read_text().split("503 POST /api/v1/votes/")[-1][:200]


def test_readyz_names_the_broker_when_it_is_down(tmp_path):
    from tests.helpers import free_port

    server = start_production_server(tmp_path, CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        status, _, body = server.get("/readyz")
        assert status == 503
        report = json.loads(body)
        assert report["ready"] is False
        assert report["checks"]["database"] == "ok" and report["checks"]["broker"] != "ok"
    finally:
        stop(server)


def test_metrics_answer_localhost_or_the_token_holder(tmp_path):
    server = start_production_server(tmp_path, PROSPECT_METRICS_TOKEN="scrape-me")
    try:
        server.shell(ANNOTATOR_SETUP)
        assert server.get("/metrics")[0] == 403
        assert server.get("/metrics", {"Authorization": "Bearer wrong"})[0] == 403
        server.get("/healthz")
        status, _, body = server.get("/metrics", {"Authorization": "Bearer scrape-me"})
        assert status == 200
        text = body.decode()
        assert 'prospect_votes{label="desirable"} 0.0' in text
        assert "prospect_annotation_queue_depth 1.0" in text
        assert 'prospect_training_runs{status="failed"} 0.0' in text
        assert 'prospect_http_request_duration_seconds_count{method="GET",route="healthz",status="200"}' in text
    finally:
        stop(server)


def test_metrics_add_up_the_requests_of_every_worker(tmp_path):
    """Two worker processes share the listening socket, so which one answers a new connection is
    the kernel's choice. Requests on many connections land on both (each worker writes its own
    counts file, named by its pid); every scrape, whichever worker answers it, reports the sum.

    The server is ready as soon as one worker answers; the other may still be starting (seen on a
    slow machine: all of 40 requests answered by one), so requests go on until both have answered."""
    folder = tmp_path / "prometheus"
    server = start_production_server(tmp_path, workers=2, PROMETHEUS_MULTIPROC_DIR=str(folder))
    try:
        before = healthz_count(server)
        sent = 0

        def both_workers_answered() -> bool:
            nonlocal sent
            for _ in range(20):
                assert server.get("/healthz")[0] == 200  # urllib: a new connection each time
                sent += 1
            return len(writers(folder)) == 2

        wait_for(
            both_workers_answered,
            60,
            "both workers to answer /healthz",
            on_timeout=lambda: f"counts files: {sorted(writers(folder))}",
        )
        assert {healthz_count(server) for _ in range(12)} == {before + sent}
    finally:
        stop(server)


def writers(folder: Path) -> set[str]:
    """The pids of the workers that have counted a request (one counts file each)."""
    return {path.stem.rsplit("_", 1)[-1] for path in folder.glob("histogram_*.db")}


def healthz_count(server) -> float:
    status, _, body = server.get("/metrics")
    assert status == 200
    line = 'prospect_http_request_duration_seconds_count{method="GET",route="healthz",status="200"}'
    for row in body.decode().splitlines():
        if row.startswith(line):
            return float(row.split()[-1])
    return 0.0
