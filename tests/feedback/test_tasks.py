"""The import job end to end, as deployed: the production web server with DEBUG off accepts a big
upload at once (202 + a status URL) and a real Celery worker imports it.

Before jobs, the import ran inside the request: a 50 MB file took 52 s, so under a 30 s proxy or
worker timeout the request was killed and nothing was imported. Now the request only streams the
file to disk and queues the job, whatever the file's size: the answer says "queued", and the client follows the job at its status URL.
"""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from celery import current_app

from feedback.services import jobs
from tests.helpers import wait_for
from tests.ops.production_server import start_production_server, stop

ROWS = 15_000
KEY_SETUP = """
from projects.selectors import default_project
from projects.services import create_api_key
_, key = create_api_key(default_project(), scopes="import,read")
print("KEY", key)
"""


@pytest.fixture
def server(tmp_path, loop_redis):
    server = start_production_server(tmp_path, CELERY_BROKER_URL=loop_redis)
    yield server
    stop(server)


def test_a_big_upload_is_accepted_at_once_and_a_real_worker_imports_it_once(server, start_worker):
    worker = start_worker(
        "default",
        # The worker shares the web's database and data directory (the uploaded file is there).
        env={"DATABASE_URL": server.env["DATABASE_URL"], "PROSPECT_DATA_DIR": server.env["PROSPECT_DATA_DIR"]},
        wait=False,
    )
    out = server.shell(KEY_SETUP).split()
    headers = {"Authorization": f"Api-Key {out[out.index('KEY') + 1]}"}
    lines = (
        json.dumps({"prompt": f"Question {i}?", "completion": f"Answer {i}.", "label": i % 3 != 0}) for i in range(ROWS)
    )
    body = ("\n".join(lines) + "\n").encode()

    # A cold worker imports the views on its first request: done here, not inside the timed upload.
    assert httpx.get(f"{server.url}/api/v1/jobs/1/", headers=headers, timeout=60).status_code == 404
    response = httpx.post(
        f"{server.url}/api/v1/imports/",
        files={"file": ("big.jsonl", body, "application/x-ndjson")},
        data={"format": "kto"},
        headers=headers,
        timeout=60,
    )
    assert response.status_code == 202, response.text[:500]
    status_url = response.headers["Location"]
    assert status_url == response.json()["status_url"] and response.json()["status"] == "queued"

    def finished():
        job = httpx.get(status_url, headers=headers, timeout=30).json()
        return job if job["status"] in ("succeeded", "failed") else None

    job = wait_for(finished, 180, "the import job to finish", interval=0.5, on_timeout=worker.log)
    assert job["status"] == "succeeded", (job["errors"], worker.log()[-3000:])
    assert (job["progress"], job["result"]["lines"], job["result"]["votes_created"]) == (1.0, ROWS, ROWS)

    # The broker delivers the same task again (a worker died before acknowledging it): nothing more happens.
    current_app.send_task(jobs.RUN_JOB_TASK, args=[job["id"]])
    wait_for(lambda: f"job {job['id']}: not queued" in worker.log(), 60, "the second delivery", on_timeout=worker.log)
    with sqlite3.connect(server.database) as database:
        batches = database.execute("SELECT count(*) FROM feedback_importbatch").fetchone()[0]
        votes = database.execute("SELECT count(*) FROM feedback_vote").fetchone()[0]
    assert (batches, votes) == (1, ROWS)
    assert "Traceback" not in server.log.read_text()
