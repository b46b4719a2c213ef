"""The same run_training message delivered twice (two workers at once) trains the run once."""
from __future__ import annotations

import pytest

from tests.loop_backend.conftest import run_dirs, run_status, wait_for
from training import runs
from training.models import ModelVersion, TrainingRun
from training.tasks import run_training

pytestmark = pytest.mark.slow


def test_two_deliveries_of_one_run_train_it_once(demo_loop, start_worker, loop_redis, data_dir):
    first, second = start_worker("gpu"), start_worker("gpu")

    run = runs.start_run()
    # A redelivery: the very same task (same id and argument) reaches the broker again.
    task_id = f"run-{run.pk}-duplicate"
    run_training.apply_async(args=[run.pk], task_id=task_id)
    run_training.apply_async(args=[run.pk], task_id=task_id)

    both_logs = lambda: first.log() + second.log()  # noqa: E731
    wait_for(lambda: run_status(run.pk) == "succeeded", 240, "the run to succeed", on_timeout=both_logs)
    # Three deliveries in all (start_run's and the two duplicates): every one has been handled.
    wait_for(lambda: both_logs().count("training.tasks.run_training[") >= 6, 120,
             "all deliveries to finish", on_timeout=both_logs)

    assert len(run_dirs(data_dir, run.pk)) == 1
    assert both_logs().count("is not queued any more") == 2
    assert ModelVersion.objects.filter(created_by_run=run).count() == 1
    assert TrainingRun.objects.get(pk=run.pk).exit_code == 0
