"""Cancelling a running run stops its whole process tree and keeps the run cancelled."""
from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from tests.loop_backend.conftest import wait_for
from training import runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.selectors import active_version

pytestmark = pytest.mark.slow


def test_cancel_kills_the_training_process_group(demo_loop, start_worker, loop_redis):
    worker = start_worker("gpu")
    run = runs.start_run(config={"max_steps": 10_000})

    def training_started():
        current = TrainingRun.objects.get(pk=run.pk)
        return current.current_step >= 1 and current.process_group_id

    pgid = wait_for(training_started, 240, "the first training step", on_timeout=worker.log)
    runs.cancel_run(run)

    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).exit_code is not None, 60,
             "the runner to record the exit code", on_timeout=worker.log)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.exit_code != 0
    assert not process_alive(pgid)
    assert active_version() == demo_loop and not ModelVersion.objects.filter(created_by_run=run).exists()
    with pytest.raises(ValidationError, match="already finished"):
        runs.cancel_run(run)


def test_cancel_of_a_queued_run_means_its_task_does_nothing(demo_loop, loop_redis):
    from training.runner import execute_run

    run = runs.start_run()
    runs.cancel_run(run)

    assert execute_run(run.pk) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.started_at is None and not run.artifact_dir
