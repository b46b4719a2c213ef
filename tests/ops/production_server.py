"""A real production-mode web server for the tests: the shipped web process (`python -m
config.web_server`, granian), DEBUG off, its own SQLite database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from config import web_server
from tests.helpers import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"


@dataclass
class Server:
    url: str
    env: dict
    database: Path
    process: subprocess.Popen
    log: Path

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
        return request(self.url + path, headers=headers)


def request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body); the headers look names up in any case, as HTTP says they are."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def start_production_server(tmp_path: Path, workers: int = 1, **extra_env: str) -> Server:
    data_dir = tmp_path / "prod-data"
    data_dir.mkdir()
    database = data_dir / "db.sqlite3"
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("DEBUG", "DATABASE_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="0",
        SECRET_KEY="test-only-production-key-" + "q8Zr" * 10,
        PROSPECT_DATA_DIR=str(data_dir),
        DATABASE_URL=f"sqlite:///{database}",
        PYTHONUNBUFFERED="1",
        **extra_env,
    )
    log = tmp_path / "web.log"
    server = Server(f"http://127.0.0.1:{port}", env, database, None, log)  # type: ignore[arg-type]
    server.manage("migrate", "--noinput")
    server.process = subprocess.Popen(
        web_server.command(port, workers),
        cwd=REPO,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def answers() -> bool:
        try:
            return server.get("/healthz")[0] == 200
        except OSError:
            return False

    wait_for(answers, 90, "the web server to answer /healthz", on_timeout=lambda: log.read_text())
    return server


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    # A worker still shutting down when its main process is gone would outlive the test (seen: a
    # granian worker serving on after the main process was killed): the server's whole group goes.
    try:
        os.killpg(server.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
