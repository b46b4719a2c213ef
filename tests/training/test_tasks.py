"""The same run_training message delivered twice (two workers at once) trains the run once.

The GPU worker is SIGKILLed mid-run: the run is marked failed (not resumed), its training
processes are stopped, and the active model version is unchanged.

The fill_queue task runs on a real worker that consumes only the gpu queue.
"""

from __future__ import annotations

import time

import pytest

from feedback.models import Generation
from tests.helpers import wait_for
from tests.training.helpers import run_dirs, run_status
from training import runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.selectors import active_version
from training.tasks import fill_queue, run_training

# --- duplicate delivery ----------------------------------------


@pytest.mark.slow
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
    wait_for(
        lambda: both_logs().count("training.tasks.run_training[") >= 6,
        120,
        "all deliveries to finish",
        on_timeout=both_logs,
    )

    assert len(run_dirs(data_dir, run.pk)) == 1
    assert both_logs().count("is not queued any more") == 2
    assert ModelVersion.objects.filter(created_by_run=run).count() == 1
    assert TrainingRun.objects.get(pk=run.pk).exit_code == 0


# --- worker killed ----------------------------------------


@pytest.mark.slow
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
    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.FAILED,
        60,
        "the run to be marked failed",
        on_timeout=replacement.log,
    )
    wait_for(lambda: not process_alive(pgid), 30, "the orphaned training process to be killed")

    run.refresh_from_db()
    assert f"worker process {worker.pid}" in run.error and run.finished_at is not None
    assert active_version() == demo_loop
    assert not ModelVersion.objects.filter(created_by_run=run).exists()


# --- fill queue task ----------------------------------------


TASK_TIMEOUT_S = 120


@pytest.mark.slow
def test_fill_queue_task_is_routed_to_the_gpu_worker_and_fills_the_queue(start_worker, loop_redis, active_demo_version):
    worker = start_worker("gpu")  # a task routed anywhere else would never run
    fill_queue.delay(n=4)
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while not Generation.objects.filter(source="fill_queue").exists():
        assert time.monotonic() < deadline, worker.log_path.read_text()[-4000:]
        time.sleep(0.3)
    generations = Generation.objects.filter(source="fill_queue")
    assert all(generation.model_version_id == active_demo_version.pk for generation in generations)
    assert "training.fill_queue" in worker.log_path.read_text()
