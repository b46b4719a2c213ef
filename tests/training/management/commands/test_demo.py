"""`manage.py demo` starts web, workers and beat on embedded defaults, serves pages, and stops them all."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from django.conf import settings

from tests.helpers import LOOP_REDIS_URL, free_port

pytestmark = pytest.mark.slow

CHILDREN = ("web", "serving", "worker-default", "worker-gpu", "beat")
# Lines that show each child really came up (not just forked).
UP_PATTERNS = (
    r"^\[worker-gpu\] .*ready\.",
    r"^\[worker-default\] .*ready\.",
    r"^\[beat\] .*beat: Starting",
    r"^\[serving\] serving models",
)
EXIT_AFTER_S = 25
DEMO_TIMEOUT_S = 240


@pytest.mark.parametrize("broker, stop_by", [("redis", "ctrl-c"), ("no-redis", "exit-after")])
def test_demo_starts_everything_serves_and_stops_cleanly(demo_model_dir, tmp_path, broker, stop_by):
    data_dir = tmp_path / "data"
    # The demo model is the engine's cached build (the demo_model_dir fixture made it, in the same
    # PROSPECT_CACHE_DIR the command inherits): the command must find it, not spend minutes building one.
    port = free_port()
    # No DEBUG either: `manage.py demo` asks for it itself, as `make demo` on a fresh machine.
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "CELERY_BROKER_URL", "DEBUG")}
    env.update(PROSPECT_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    if broker == "redis":
        import redis

        env["REDIS_URL"] = LOOP_REDIS_URL
        redis.Redis.from_url(env["REDIS_URL"]).flushdb()
    else:
        env["REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there: the filesystem broker is used

    # Ctrl-C: stopped by SIGINT once everything is up (--exit-after is then only a safety net).
    exit_after = EXIT_AFTER_S if stop_by == "exit-after" else DEMO_TIMEOUT_S
    demo = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "demo",
            "--port",
            str(port),
            "--serving-port",
            str(free_port()),
            "--exit-after",
            str(exit_after),
        ],  # fmt: skip
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        while not any(line.startswith("ready: ") for line in lines):
            assert demo.poll() is None, "demo exited before it was ready:\n" + "".join(lines[-80:])
            assert time.monotonic() < deadline, "demo not ready in time:\n" + "".join(lines[-80:])
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10) as response:
            assert response.status == 200
            assert b"Log in" in response.read()
        # /v1/ reaches the serving process through the web app: an OpenAI-shaped refusal without a key.
        v1 = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(v1, timeout=30)
        assert refused.value.code == 401 and json.loads(refused.value.read())["error"]["code"] == "invalid_api_key"
        if stop_by == "ctrl-c":
            while not all(re.search(pattern, "".join(lines), re.M) for pattern in UP_PATTERNS):
                assert demo.poll() is None, "demo exited early:\n" + "".join(lines[-80:])
                assert time.monotonic() < deadline, "children not up in time:\n" + "".join(lines[-80:])
                time.sleep(0.2)
            demo.send_signal(signal.SIGINT)
        demo.wait(timeout=DEMO_TIMEOUT_S)
    finally:
        if demo.poll() is None:
            demo.kill()
        reader.join(timeout=5)
    output = "".join(lines)
    assert demo.returncode == 0, output[-6000:]

    expected_broker = "(redis)" if broker == "redis" else "(filesystem)"
    assert re.search(rf"^broker: .* {re.escape(expected_broker)}$", output, re.M), output[-6000:]
    assert "admin / admin" in output and "annotator / annotator" in output
    started = dict(re.findall(r"^started (\S+) pid=(\d+)$", output, re.M))
    stopped = dict(re.findall(r"^stopped (\S+) pid=(\d+) exit=", output, re.M))
    assert set(started) == set(CHILDREN), output[-6000:]
    assert stopped == started
    # Both workers and beat really came up (not just forked) before the demo stopped them.
    for pattern in UP_PATTERNS:
        assert re.search(pattern, output, re.M), (pattern, output[-6000:])
    assert ("stop requested" if stop_by == "ctrl-c" else "--exit-after") in output
    for pid in started.values():
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid), 0)

    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        users = dict(db.execute("select username, is_staff from auth_user").fetchall())
        active = db.execute("select artifact_path from training_modelversion where status = 'active'").fetchall()
        queued = db.execute("select count(*) from feedback_generation where model_version_id is not null").fetchone()[0]
    assert users == {"admin": 1, "annotator": 0}
    assert active == [(demo_model_dir,)]
    assert queued > 0  # the annotation queue was seeded with outputs of the active model
