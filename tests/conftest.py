"""Fixtures shared by the whole suite: the demo model and the tokenizer-family fixture models (built
once, cached across sessions), a browser, and real Celery workers with real Redis and a real database shared with them.

The workers are separate processes, so they must see what a test wrote: the tests that start one
use `committed_db` (rows are committed), and on SQLite the test database is a file instead of
pytest-django's default in-memory one (set below, before the test database is created). On
Postgres the workers connect to the same test database by name.

Redis: the shared server's database 2 (flushed before each test that uses it), or
PROSPECT_LOOP_TEST_REDIS_URL. The Redis-down test starts its own redis-server on a spare port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.helpers import (
    LOOP_REDIS_URL,
    REPO,
    InProcessServing,
    database_url_for_workers,
    free_port,
    point_celery_at,
    wait_for,
)

# Playwright's sync API runs an event loop in the test thread; Django's ORM would otherwise refuse
# to run next to it. The tests are single-threaded, so this is safe here.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
WORKER_READY_SECONDS = 90


_demo_model_build: subprocess.Popen | None = None


def pytest_collection_finish(session) -> None:
    """Start building the demo model on the other core while the first tests run, when a collected
    test needs it and it is not cached yet. The build is single-threaded (it must be bit-identical
    on every machine) and takes minutes; the tests before the first one that needs it mostly keep
    one core busy. `demo_model_dir` then waits on the build's file lock instead of building (see
    training.kto.testing); if the background build fails, the fixture builds it and reports why."""
    global _demo_model_build
    from training.kto.testing import demo_model_cached

    if demo_model_cached() or not any("demo_model_dir" in item.fixturenames for item in session.items):
        return
    _demo_model_build = subprocess.Popen(
        [sys.executable, "-c", "from training.kto.testing import get_or_build_demo_model; get_or_build_demo_model()"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the build runs in a child of it
    )


def pytest_sessionfinish(session, exitstatus) -> None:
    if _demo_model_build is not None and _demo_model_build.poll() is None:
        # A run stopped early (-x, Ctrl-C) before it needed the model: stop the build, child included.
        os.killpg(_demo_model_build.pid, signal.SIGTERM)
        _demo_model_build.wait()


@pytest.fixture(scope="session")
def demo_model_dir() -> str:
    """The offline demo model, built once and cached across sessions by the hash of its recipe."""
    from training.kto.testing import get_or_build_demo_model

    return get_or_build_demo_model()


@pytest.fixture
def committed_db(transactional_db, django_db_serialized_rollback):
    """A test database whose writes are committed, so other processes (workers, a live server) see
    them. Like every transactional test of the suite it restores the serialized database afterwards:
    a plain flush would re-create content types under new ids and drop the rows data migrations
    made (the annotators group), which breaks the next test that restores the serialized copy."""


@pytest.fixture(autouse=True, scope="session")
def serving_in_process():
    """The web app's calls to the serving process go to its WSGI app in this process (see above)."""
    from training import serving_client

    serving_client.set_transport(InProcessServing())
    yield
    serving_client.set_transport(None)


@pytest.fixture(scope="session")
def bpe_model_dir() -> str:
    """Byte-level BPE tokenizer (GPT-2/Qwen style, ChatML template) + a tiny random Qwen2."""
    from training.kto.testing import get_or_build_fixture_model

    return get_or_build_fixture_model("bpe", "qwen2")


@pytest.fixture(scope="session")
def sentencepiece_model_dir() -> str:
    """SentencePiece-style tokenizer (Llama 2/Mistral style, BOS, [INST] template) + a tiny random Llama."""
    from training.kto.testing import get_or_build_fixture_model

    return get_or_build_fixture_model("sentencepiece", "llama")


@pytest.fixture(scope="session")
def browser(django_db_setup, django_db_blocker):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh (installs Debian's chromium)")
    from django.db import connections
    from playwright.sync_api import sync_playwright

    # Playwright's sync API switches the test thread into its own context, where Django's
    # connection handler (a context-local) hands out fresh connection objects. Those lack the copy
    # of the migrated data that serialized_rollback restores (the default project, the role
    # groups), so carry it over; the in-memory test database itself is shared.
    serialized = {
        conn.alias: conn._test_serialized_contents
        for conn in connections.all()
        if hasattr(conn, "_test_serialized_contents")
    }
    with sync_playwright() as playwright:
        for alias, contents in serialized.items():
            connections[alias]._test_serialized_contents = contents
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


# --- Celery workers ------------------------------------------------------------------------------
def _use_file_based_sqlite_test_db() -> None:
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        return
    test = database.setdefault("TEST", {})
    if not test.get("NAME"):
        test["NAME"] = str(Path(tempfile.gettempdir()) / f"prospect-loop-test-{os.getpid()}.sqlite3")


_use_file_based_sqlite_test_db()


@pytest.fixture
def data_dir(settings, tmp_path):
    """A private DATA_DIR (snapshots, run artifacts) shared by the test and its workers."""
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


@pytest.fixture
def loop_redis():
    """This process's Celery producer sends to the tests' own Redis database, emptied first."""
    import redis

    from config.celery import app

    client = redis.Redis.from_url(LOOP_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {LOOP_REDIS_URL} is not answering ({exc}); the loop tests need a real Redis")
    client.flushdb()
    saved = app.conf.broker_url
    point_celery_at(LOOP_REDIS_URL)
    yield LOOP_REDIS_URL
    client.flushdb()
    point_celery_at(saved)


class Worker:
    def __init__(self, proc: subprocess.Popen, log_path: Path, name: str):
        self.proc, self.log_path, self.name = proc, log_path, name

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            return " ready." in self.log()

        wait_for(ready, timeout, f"worker {self.name} to be ready", interval=0.2, on_timeout=lambda: self.log()[-4000:])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the worker process only (what a crash or an OOM kill does to it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def kill_group(self) -> None:
        """The worker and its children (embedded beat); the training tree has its own session."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=60)


@pytest.fixture
def start_worker(committed_db, data_dir, tmp_path):
    """Start real `celery worker` processes against the test database; all are killed at teardown.

    start_worker(queues="default,gpu", beat=False, broker_url=LOOP_REDIS_URL, env={...}) -> Worker
    """
    workers: list[Worker] = []

    def start(
        queues: str = "default,gpu",
        *,
        beat: bool = False,
        broker_url: str | None = LOOP_REDIS_URL,
        env: dict | None = None,
        wait: bool = True,
    ) -> Worker:
        name = f"loop-{uuid.uuid4().hex[:8]}"
        log_path = tmp_path / f"{name}.log"
        worker_env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=database_url_for_workers(),
            CELERY_BROKER_URL=broker_url or "",
            PROSPECT_DATA_DIR=str(data_dir),
            PROSPECT_RUN_POLL_SECONDS="0.5",
            # One plain process instead of `accelerate launch`: same engine, less start-up per run.
            PROSPECT_TRAIN_LAUNCHER="python",
            PYTHONUNBUFFERED="1",
        )
        if broker_url is None:
            # No broker configured: the Celery app chooses one (Redis if it answers, else files).
            del worker_env["CELERY_BROKER_URL"]
        worker_env.update(env or {})
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-P", "solo", "-c", "1",
            "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
            "--without-heartbeat", "-l", "INFO",
        ]  # fmt: skip
        if beat:
            # Embedded beat; CELERY_BEAT_SCHEDULER already selects django-celery-beat's
            # DatabaseScheduler (for `celery worker`, -S would mean --statedb, a file in the cwd).
            command += ["-B"]
        with open(log_path, "wb") as log:
            # Own process group: `-B` runs beat in a child process that must die with the worker.
            proc = subprocess.Popen(
                command, cwd=REPO, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        worker = Worker(proc, log_path, name)
        workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start

    from training.models import TrainingRun
    from training.processes import kill_run_processes

    for worker in workers:
        worker.kill_group()
    # A killed worker leaves its training tree (own session) behind: stop it before the next test.
    for run_id, pgid, run_dir in TrainingRun.objects.exclude(process_group_id=None).values_list(
        "pk", "process_group_id", "artifact_dir"
    ):
        kill_run_processes(pgid, run_id, run_dir=run_dir or None)


@pytest.fixture
def celery_worker_process(loop_redis, start_worker):
    """One worker on both queues (what the demo's laptop setup amounts to)."""
    return start_worker("gpu,default")


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of our own on a spare port, which the test may stop and start again."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; the Redis-down test needs one it can stop")
    port = free_port()

    def pings(client) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    class PrivateRedis:
        url = f"redis://127.0.0.1:{port}/0"
        proc: subprocess.Popen | None = None

        def start(self) -> None:
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            client = redis.Redis(port=port)
            wait_for(lambda: pings(client), 20, f"redis-server on port {port}")

        def stop(self) -> None:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=20)

    server = PrivateRedis()
    server.start()
    yield server
    server.stop()
