"""A run whose worker died is marked failed (not resumed), and its leftover training tree is killed."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from feedback.models import DatasetSnapshot
from training.models import TrainingRun
from training.processes import process_alive
from training.runs import reap_orphaned_runs

pytestmark = pytest.mark.django_db


def _running_run(**fields) -> TrainingRun:
    snapshot = DatasetSnapshot.objects.create(path="/nonexistent", sha256="0" * 64)
    now = timezone.now()
    defaults = {"status": TrainingRun.Status.RUNNING, "started_at": now, "heartbeat_at": now,
                "worker_hostname": socket.gethostname()}
    defaults.update(fields)
    return TrainingRun.objects.create(snapshot=snapshot, **defaults)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_of_a_dead_worker_is_failed_and_its_training_tree_killed():
    # Stand-in for the orphaned training tree: its own session, marked with the run id like the runner does.
    run = _running_run(worker_pid=_dead_pid())
    marked_env = dict(os.environ, PROSPECT_RUN_ID=str(run.pk))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=marked_env,
                              start_new_session=True)
    TrainingRun.objects.filter(pk=run.pk).update(process_group_id=orphan.pid)

    assert reap_orphaned_runs() == [run.pk]

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "died" in run.error and run.finished_at
    assert orphan.wait(timeout=30) == -9


def test_run_of_a_live_worker_is_left_alone():
    run = _running_run(worker_pid=os.getpid())
    assert reap_orphaned_runs() == []
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING


def test_run_on_another_host_is_failed_only_when_its_heartbeat_is_stale(settings):
    settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS = 60
    fresh = _running_run(worker_hostname="gpu-host-7", worker_pid=1)
    stale = _running_run(worker_hostname="gpu-host-8", worker_pid=1,
                         heartbeat_at=timezone.now() - timedelta(seconds=61))

    assert reap_orphaned_runs() == [stale.pk]

    fresh.refresh_from_db()
    stale.refresh_from_db()
    assert fresh.status == TrainingRun.Status.RUNNING
    assert stale.status == TrainingRun.Status.FAILED and "heartbeat" in stale.error


def test_process_alive_sees_zombies_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: a zombie until wait(); it must not count as a live worker.
    for _ in range(200):
        if not process_alive(proc.pid):
            break
        time.sleep(0.05)
    assert not process_alive(proc.pid)
    proc.wait()


def test_gate_interrupted_by_a_dead_worker_is_recorded_as_failed():
    from training.models import ModelVersion

    run = _running_run(worker_pid=_dead_pid(), status=TrainingRun.Status.SUCCEEDED)
    candidate = ModelVersion.objects.create(
        name="run-x", base_model="/m", artifact_path="/m/final", created_by_run=run,
        evaluation_state=ModelVersion.EvaluationState.RUNNING,
    )

    reap_orphaned_runs()

    candidate.refresh_from_db()
    assert candidate.evaluation_state == ModelVersion.EvaluationState.FAILED
    assert candidate.status == ModelVersion.Status.CANDIDATE and "died during the evaluation gate" in candidate.status_reason
