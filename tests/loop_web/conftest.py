"""Fixtures of the loop's web side: users, an active demo model, and a real Celery worker.

The worker is a separate process, so it must see the test database: on PostgreSQL that is the
test database pytest-django created; on SQLite the in-memory default cannot be shared, so the
test database is made a file (set below, before pytest-django creates it). Messages go through
this team's own Redis database (3 by default), so parallel test sessions never steal each other's
tasks.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings

LOOP_WEB_BROKER_URL = os.environ.get("PROSPECT_TEST_LOOP_WEB_BROKER", "redis://127.0.0.1:6379/3")
WORKER_READY_TIMEOUT_S = 90

_database = settings.DATABASES["default"]
if _database["ENGINE"].endswith("sqlite3") and not (_database.get("TEST") or {}).get("NAME"):
    # Workers are other processes: they can only share a test database that lives in a file.
    _database.setdefault("TEST", {})["NAME"] = str(
        Path(tempfile.gettempdir()) / f"prospect-test-{os.getpid()}.sqlite3"
    )


def database_url_of_test_db() -> str:
    """A DATABASE_URL that points another process at the current test database."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture
def password() -> str:
    return "correct horse battery staple"


@pytest.fixture
def admin_user(django_user_model, password):
    return django_user_model.objects.create_user("boss", password=password, is_staff=True, is_superuser=True)


@pytest.fixture
def annotator_user(django_user_model, password):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("rater", password=password)
    user.groups.add(Group.objects.get_or_create(name="annotators")[0])
    return user


@pytest.fixture
def active_demo_version(demo_model_dir):
    from training import registry

    return registry.ensure_base_version(demo_model_dir)


@pytest.fixture
def voted_demo_data():
    """A small two-class dataset of real votes on demo questions: right and wrong sums."""
    from feedback.services import record_vote
    from feedback.services.generations import GenerationInput, create_generations
    from training.kto.demo import correct_answer, demo_prompts

    items = []
    for index, prompt in enumerate(demo_prompts(24, seed=5, split="train")):
        right = correct_answer(prompt)
        completion = right if index % 2 == 0 else str(int(right) + 1)
        items.append(GenerationInput(prompt=prompt, completion=completion, source="test"))
    for generation, _ in create_generations(items):
        record_vote(generation_id=generation.pk, desirable=generation.completion == correct_answer(generation.prompt.content),
                    external_user_id="tester", source="test")


@pytest.fixture(scope="session")
def loop_web_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loop-web-data")


@pytest.fixture
def loop_web_settings(settings, loop_web_data_dir):
    """This process (the live server) writes snapshots where the worker reads them."""
    settings.DATA_DIR = loop_web_data_dir
    return settings


@pytest.fixture
def loop_web_broker():
    """Point this process's Celery producer at the loop-web Redis database, emptied first."""
    import redis

    from config.celery import app

    redis.Redis.from_url(LOOP_WEB_BROKER_URL).flushdb()
    saved = (app.conf.broker_url, app.conf.broker_transport_options)
    app.conf.broker_url = LOOP_WEB_BROKER_URL
    app.conf.broker_transport_options = {"visibility_timeout": 7200}
    _drop_cached_connections(app)
    yield LOOP_WEB_BROKER_URL
    app.conf.broker_url, app.conf.broker_transport_options = saved
    _drop_cached_connections(app)


def _drop_cached_connections(app) -> None:
    # Celery caches connection and producer pools per app, and kombu keeps a global registry of
    # them per broker URL (which may hold pools another fixture closed): clear both.
    import kombu.pools

    app._pool = None
    app.amqp._producer_pool = None
    kombu.pools.reset()


@pytest.fixture
def start_celery_worker(transactional_db, loop_web_broker, loop_web_settings, loop_web_data_dir, tmp_path):
    """start(queues) -> a real `celery worker` process, like the demo's, against the test database."""
    workers: list[subprocess.Popen] = []

    def start(queues: str = "gpu,default") -> subprocess.Popen:
        log_path = tmp_path / f"worker-{len(workers)}.log"
        env = dict(os.environ)
        env.update({
            "DATABASE_URL": database_url_of_test_db(),
            "CELERY_BROKER_URL": loop_web_broker,
            "PROSPECT_DATA_DIR": str(loop_web_data_dir),
            # One plain process instead of `accelerate launch`: same engine, less start-up per run.
            "PROSPECT_TRAIN_LAUNCHER": "python",
            "PROSPECT_RUN_POLL_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
        })
        with open(log_path, "w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues, "-P", "solo",
                 "-c", "1", "--prefetch-multiplier", "1", "-n", f"loopweb{os.getpid()}-{len(workers)}@%h",
                 "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
                cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        workers.append(worker)
        worker.log_path = log_path
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while " ready." not in log_path.read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the celery worker did not start:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        return worker

    yield start
    for worker in workers:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
            worker.wait()


@pytest.fixture
def celery_worker_process(start_celery_worker):
    """One worker on both queues (what the demo's laptop setup amounts to)."""
    return start_celery_worker("gpu,default")
