"""Two installations on one Redis database never run each other's tasks (real workers), and a
task message that names another installation is refused by the worker that receives it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import redis

from tests.helpers import LOOP_REDIS_URL, REPO, database_url_for_workers, wait_for

REAP = "training.tasks.reap_orphaned_runs"


def send_as(installation: str, task_id: str, *, header: str | None = None) -> None:
    """Send a task from a separate process of `installation` ('web' of that installation).

    header: overrides the installation id the message carries (what a misconfigured sender, or a
    message copied from another installation, would look like).
    """
    stamp = (
        ""
        if header is None
        else (
            "from celery.signals import before_task_publish\n"
            "before_task_publish.connect(\n"
            f"    lambda headers=None, **kw: headers.__setitem__('prospect_installation', {header!r}), weak=False)\n"
        )
    )
    code = (
        "import django; django.setup()\n"
        + stamp
        + f"from config.celery import app\napp.send_task({REAP!r}, task_id={task_id!r}, retry=False)\n"
    )
    env = dict(
        os.environ,
        PROSPECT_INSTALLATION_ID=installation,
        CELERY_BROKER_URL=LOOP_REDIS_URL,
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url_for_workers(),
    )
    sent = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr


def test_two_installations_on_one_redis_database_never_run_each_others_tasks(loop_redis, start_worker):
    alpha = start_worker("default", env={"PROSPECT_INSTALLATION_ID": "alpha"})
    beta = start_worker("default", env={"PROSPECT_INSTALLATION_ID": "beta"})
    alpha_tasks = [f"alpha-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    beta_tasks = [f"beta-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for alpha_task, beta_task in zip(alpha_tasks, beta_tasks):
        send_as("alpha", alpha_task)
        send_as("beta", beta_task)

    def all_done() -> bool:
        return all(f"[{t}] succeeded" in alpha.log() for t in alpha_tasks) and all(
            f"[{t}] succeeded" in beta.log() for t in beta_tasks
        )

    wait_for(
        all_done,
        90,
        "each worker to run its own installation's tasks",
        on_timeout=lambda: alpha.log()[-3000:] + "\n----\n" + beta.log()[-3000:],
    )
    assert not any(t in alpha.log() for t in beta_tasks)
    assert not any(t in beta.log() for t in alpha_tasks)
    # The broker's keys of each installation live under its own prefix.
    keys = {key.decode() for key in redis.Redis.from_url(LOOP_REDIS_URL).keys("*")}
    for installation in ("alpha", "beta"):
        assert any(key.startswith(f"prospect.{installation}.") for key in keys)
    assert "default" not in keys and "_kombu.binding.default" not in keys


def test_a_message_that_names_another_installation_is_refused(loop_redis, start_worker):
    alpha = start_worker("default", env={"PROSPECT_INSTALLATION_ID": "alpha"})
    foreign, own = f"foreign-{uuid.uuid4().hex[:8]}", f"own-{uuid.uuid4().hex[:8]}"
    send_as("alpha", foreign, header="beta")  # in alpha's queue, but it says it is beta's
    send_as("alpha", own)
    wait_for(
        lambda: f"[{own}] succeeded" in alpha.log(),
        90,
        "alpha's own task to run",
        on_timeout=lambda: alpha.log()[-3000:],
    )
    log = alpha.log()
    assert f"refused task {REAP}[{foreign}]: sent by installation 'beta', this is 'alpha'" in log
