"""No Redis at all: the settings fall back to kombu's filesystem transport and tasks still flow."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, database_url_for_workers, free_port, wait_for
from tests.training.helpers import cast_demo_votes, loadable_artifact
from training.models import TrainingRun
from training.policy import get_policy

pytestmark = pytest.mark.slow


def test_without_redis_tasks_go_through_files_under_data_dir(start_worker, data_dir, tmp_path):
    no_redis = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
    policy = get_policy()
    policy.min_new_votes, policy.cooldown_seconds, policy.base_model = 10, 0, loadable_artifact(tmp_path / "base")
    policy.save()
    cast_demo_votes(5)
    env = dict(
        os.environ,
        DATABASE_URL=database_url_for_workers(),
        PROSPECT_DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="config.settings",
        **no_redis,
    )
    env.pop("CELERY_BROKER_URL", None)
    # A separate 'web' process sends the periodic check; it must pick the same embedded broker.
    sent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from config.celery import app; "
            "from training.tasks import maybe_retrain; maybe_retrain.delay(); print(app.conf.broker_url)",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "filesystem://"
    assert any((data_dir / "broker" / "queue").iterdir())
    assert not TrainingRun.objects.exists()

    worker = start_worker("default", broker_url=None, env=no_redis)

    run = wait_for(
        lambda: TrainingRun.objects.first(),
        60,
        "maybe_retrain to run through the filesystem broker",
        on_timeout=worker.log,
    )
    assert "filesystem://" in worker.log()
    # The run's own message went through the same files (for a gpu worker on this machine).
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).enqueued_at, 30, "the run to be enqueued")
