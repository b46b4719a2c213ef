"""The web process's own environment variables (DATABASE_URL and its password, the broker URL, …)
never reach a request's META: granian copies them into every WSGI environ, and config.wsgi takes
them out again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from django.core.handlers.wsgi import WSGIHandler

from config.wsgi import application, without_server_environment
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
SECRET = "postgres://prospect:hunter2@db/prospect"


def environ_keys(url: str, path: str) -> list[str]:
    request = urllib.request.Request(url + path, headers={"X-Probe": "1"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_granian_passes_its_environment_to_the_app_and_the_wrapper_takes_it_out(tmp_path):
    port = free_port()
    env = {**os.environ, "PROSPECT_PROBE_DATABASE_URL": SECRET, "PROSPECT_DATA_DIR": str(tmp_path)}
    server = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)]
        + ["--workers", "1", "tests.ops.environ_probe:application"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            try:
                return bool(environ_keys(url, "/raw"))
            except OSError:
                return False

        wait_for(answers, 60, "granian serving the probe", on_timeout=lambda: server.kill())
        # The reason for the wrapper: the server hands its environment to every request.
        raw = environ_keys(url, "/raw")
        assert "PROSPECT_PROBE_DATABASE_URL" in raw and "PATH" in raw

        wrapped = environ_keys(url, "/wrapped")
        assert "PROSPECT_PROBE_DATABASE_URL" not in wrapped and "PATH" not in wrapped
        # What the request itself carries is all still there.
        for key in (
            "REQUEST_METHOD",
            "PATH_INFO",
            "QUERY_STRING",
            "SERVER_NAME",
            "REMOTE_ADDR",
            "HTTP_HOST",
            "HTTP_X_PROBE",
        ):
            assert key in wrapped, key
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_request_header_that_shares_a_name_with_a_server_variable_is_kept():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        return []

    wrapped = without_server_environment(app, {"HTTP_PROXY": "http://proxy.internal:3128", "SECRET": "s"})
    wrapped({"HTTP_PROXY": "http://proxy.internal:3128", "SECRET": "s", "REQUEST_METHOD": "GET"}, None)
    assert seen == {"REQUEST_METHOD": "GET"}
    seen.clear()
    wrapped({"HTTP_PROXY": "sent by the client", "REQUEST_METHOD": "GET"}, None)
    assert seen == {"HTTP_PROXY": "sent by the client", "REQUEST_METHOD": "GET"}


def test_the_shipped_application_is_django_behind_the_wrapper():
    assert isinstance(application.wrapped, WSGIHandler)
