"""training.runs: creating a run (its λ chosen once), cancelling it, reaping it, surviving Redis.

A run whose worker died is marked failed (not resumed), and its leftover training tree is killed.

Cancelling a running run stops its whole process tree and keeps the run cancelled.

Redis is down: votes still save, a requested run is kept, and scheduling catches up once it is back.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone

from feedback.models import DatasetSnapshot, Vote
from projects.selectors import default_project
from projects.services import set_membership
from tests.helpers import point_celery_at, wait_for
from tests.training.helpers import cast_demo_votes, loadable_artifact
from training import registry, runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.runs import reap_orphaned_runs
from training.scheduler import install_schedule
from training.selectors import active_version

# --- λ chosen once ----------------------------------------


@pytest.fixture
def snapshot_with_weights(db, tmp_path):
    registry.ensure_base_version(loadable_artifact(tmp_path))  # an active version to train from
    return DatasetSnapshot.objects.create(
        project=default_project(),
        path="/nowhere",
        sha256="0" * 64,
        desirable_weight=2.0,
        undesirable_weight=1.0,
        weight_rule="auto: 1:10 data",
    )


def test_a_run_trains_with_its_snapshots_weights(snapshot_with_weights):
    run = runs.start_run(snapshot=snapshot_with_weights)
    assert (run.desirable_weight, run.undesirable_weight) == (2.0, 1.0)
    assert run.weight_rule == f"snapshot {snapshot_with_weights.pk}: auto: 1:10 data"
    assert not run.overrides_snapshot_weights


def test_a_manual_override_is_recorded_on_the_run_and_shown_beside_the_snapshots(snapshot_with_weights, client):
    config = {"lambda_mode": "manual", "desirable_weight": 1.5, "undesirable_weight": 1.0}
    run = runs.start_run(snapshot=snapshot_with_weights, config=config)

    run.refresh_from_db()
    assert (run.desirable_weight, run.undesirable_weight) == (1.5, 1.0)
    assert run.overrides_snapshot_weights and "manual override" in run.weight_rule
    assert (run.snapshot.desirable_weight, run.snapshot.undesirable_weight) == (2.0, 1.0)  # the snapshot is untouched
    boss = get_user_model().objects.create_user("boss")
    set_membership(default_project(), boss, "admin")
    client.force_login(boss)
    page = client.get(reverse("training:run_detail", args=[run.pk])).content.decode()
    assert "λ_D 2.0000, λ_U 1.0000" in page  # the snapshot's
    assert "trained with λ_D 1.5000, λ_U 1.0000 (manual override)" in page


# --- reaper ----------------------------------------


def _running_run(**fields) -> TrainingRun:
    snapshot = DatasetSnapshot.objects.create(project=default_project(), path="/nonexistent", sha256="0" * 64)
    now = timezone.now()
    defaults = {
        "status": TrainingRun.Status.RUNNING,
        "started_at": now,
        "heartbeat_at": now,
        "worker_hostname": socket.gethostname(),
    }
    defaults.update(fields)
    return TrainingRun.objects.create(
        project=default_project(), snapshot=snapshot, desirable_weight=1.0, undesirable_weight=1.0, **defaults
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.django_db
def test_run_of_a_dead_worker_is_failed_and_its_training_tree_killed():
    # Stand-in for the orphaned training tree: its own session, marked with the run id like the runner does.
    run = _running_run(worker_pid=_dead_pid())
    marked_env = dict(os.environ, PROSPECT_RUN_ID=str(run.pk))
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], env=marked_env, start_new_session=True
    )
    TrainingRun.objects.filter(pk=run.pk).update(process_group_id=orphan.pid)

    assert reap_orphaned_runs() == [run.pk]

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "died" in run.error and run.finished_at
    assert orphan.wait(timeout=30) == -9


@pytest.mark.django_db
def test_run_of_a_live_worker_is_left_alone():
    run = _running_run(worker_pid=os.getpid())
    assert reap_orphaned_runs() == []
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.RUNNING


@pytest.mark.django_db
def test_run_on_another_host_is_failed_only_when_its_heartbeat_is_stale(settings):
    settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS = 60
    fresh = _running_run(worker_hostname="gpu-host-7", worker_pid=1)
    stale = _running_run(
        worker_hostname="gpu-host-8", worker_pid=1, heartbeat_at=timezone.now() - timedelta(seconds=61)
    )

    assert reap_orphaned_runs() == [stale.pk]

    fresh.refresh_from_db()
    stale.refresh_from_db()
    assert fresh.status == TrainingRun.Status.RUNNING
    assert stale.status == TrainingRun.Status.FAILED and "heartbeat" in stale.error


@pytest.mark.django_db
def test_process_alive_sees_zombies_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # Not reaped yet: a zombie until wait(); it must not count as a live worker.
    for _ in range(200):
        if not process_alive(proc.pid):
            break
        time.sleep(0.05)
    assert not process_alive(proc.pid)
    proc.wait()


@pytest.mark.django_db
def test_gate_interrupted_by_a_dead_worker_is_recorded_as_failed():
    from training.models import ModelVersion

    run = _running_run(worker_pid=_dead_pid(), status=TrainingRun.Status.SUCCEEDED)
    candidate = ModelVersion.objects.create(
        project=default_project(),
        name="run-x",
        base_model="/m",
        artifact_path="/m/final",
        created_by_run=run,
        evaluation_state=ModelVersion.EvaluationState.RUNNING,
    )

    reap_orphaned_runs()

    candidate.refresh_from_db()
    assert candidate.evaluation_state == ModelVersion.EvaluationState.FAILED
    assert (
        candidate.status == ModelVersion.Status.CANDIDATE
        and "died during the evaluation gate" in candidate.status_reason
    )


# --- cancel run ----------------------------------------


@pytest.mark.slow
def test_cancel_kills_the_training_process_group(demo_loop, start_worker, loop_redis):
    worker = start_worker("gpu")
    run = runs.start_run(config={"max_steps": 10_000})

    def training_started():
        current = TrainingRun.objects.get(pk=run.pk)
        return current.current_step >= 1 and current.process_group_id

    pgid = wait_for(training_started, 240, "the first training step", on_timeout=worker.log)
    runs.cancel_run(run)

    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).exit_code is not None,
        60,
        "the runner to record the exit code",
        on_timeout=worker.log,
    )
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.exit_code != 0
    assert not process_alive(pgid)
    assert active_version() == demo_loop and not ModelVersion.objects.filter(created_by_run=run).exists()
    with pytest.raises(ValidationError, match="already finished"):
        runs.cancel_run(run)


@pytest.mark.slow
def test_cancel_of_a_queued_run_means_its_task_does_nothing(demo_loop, loop_redis):
    from training.runner import execute_run

    run = runs.start_run()
    runs.cancel_run(run)

    assert execute_run(run.pk) is None
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.started_at is None and not run.artifact_dir


# --- redis down ----------------------------------------


@pytest.mark.slow
def test_votes_and_runs_survive_a_redis_outage(demo_loop, start_worker, private_redis, loop_redis):
    point_celery_at(private_redis.url)
    private_redis.stop()

    # Votes only need the database.
    votes_before = Vote.objects.count()
    new_vote_ids = cast_demo_votes(5, seed=7, voter="during-outage")
    assert Vote.objects.count() == votes_before + len(new_vote_ids)
    # The web's "retrain now" still answers: the run is saved, just not sent yet.
    run = runs.start_run()
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED and run.enqueued_at is None
    assert run.snapshot.last_vote_id == max(new_vote_ids)

    private_redis.start()
    install_schedule(check_seconds=1)
    worker = start_worker("default,gpu", beat=True, broker_url=private_redis.url)

    # Beat's periodic check re-sends the undelivered run, and the gpu queue trains it.
    wait_for(
        lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.SUCCEEDED,
        300,
        "the run requested during the outage to be trained",
        on_timeout=worker.log,
    )
    run.refresh_from_db()
    assert run.enqueued_at is not None and run.exit_code == 0
    assert TrainingRun.objects.count() == 1
