"""The GPU worker is SIGKILLed mid-run: the run is marked failed (not resumed), its training
processes are stopped, and the active model version is unchanged."""
from __future__ import annotations

import pytest

from tests.loop_backend.conftest import wait_for
from training import runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.selectors import active_version

pytestmark = pytest.mark.slow


def test_killed_worker_leaves_a_failed_run_and_the_active_version(demo_loop, start_worker, loop_redis):
    worker = start_worker("gpu")
    # Long enough that the kill lands mid-training.
    run = runs.start_run(config={"max_steps": 10_000, "time_limit_seconds": 3600})

    def training_started():
        current = TrainingRun.objects.get(pk=run.pk)
        return current.current_step >= 1 and current.process_group_id

    pgid = wait_for(training_started, 240, "the first training step", on_timeout=worker.log)
    worker.kill()  # SIGKILL: no chance to clean up
    # The training tree lives in its own session: it outlives the worker until someone stops it.
    assert process_alive(pgid)
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING

    # A worker starting on this host reaps the dead worker's run at once (beat does it every minute too).
    replacement = start_worker("gpu")
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.FAILED, 60,
             "the run to be marked failed", on_timeout=replacement.log)
    wait_for(lambda: not process_alive(pgid), 30, "the orphaned training process to be killed")

    run.refresh_from_db()
    assert f"worker process {worker.pid}" in run.error and run.finished_at is not None
    assert active_version() == demo_loop
    assert not ModelVersion.objects.filter(created_by_run=run).exists()
