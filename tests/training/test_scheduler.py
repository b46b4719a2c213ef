"""The periodic policy: N new votes since the last snapshot, no active run, cool-down passed."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.utils import timezone

from feedback.models import DatasetSnapshot, Vote
from tests.training.helpers import cast_demo_votes, loadable_artifact
from training import scheduler
from training.models import TrainingRun
from training.policy import get_policy
from training.scheduler import install_schedule


def maybe_retrain(now=None):
    """The one run the check started (these tests have one project), or None."""
    started = scheduler.maybe_retrain(now=now)
    assert len(started) <= 1
    return started[0] if started else None


@pytest.fixture
def policy(committed_db, data_dir, loop_redis, tmp_path):
    base = loadable_artifact(tmp_path / "base-model")
    policy = get_policy()
    policy.min_new_votes, policy.cooldown_seconds, policy.base_model = 10, 3600, base
    policy.save()
    return policy


def _gpu_queue_length() -> int:
    from config.celery import installation_key_prefix
    from tests.helpers import LOOP_REDIS_URL

    # The broker's keys of this installation are under its prefix (config/celery.py).
    return redis.Redis.from_url(LOOP_REDIS_URL).llen(f"{installation_key_prefix()}gpu")


def test_fewer_than_n_new_votes_starts_nothing(policy):
    cast_demo_votes(4)  # 8 votes < 10
    assert maybe_retrain() is None
    assert not TrainingRun.objects.exists() and not DatasetSnapshot.objects.exists()


def test_n_new_votes_snapshot_and_queue_a_run_on_the_gpu_queue(policy):
    cast_demo_votes(5)

    run = maybe_retrain()

    assert run is not None and run.status == TrainingRun.Status.QUEUED
    run.refresh_from_db()
    assert run.enqueued_at is not None and _gpu_queue_length() == 1
    assert run.snapshot.last_vote_id == Vote.objects.latest("pk").pk
    assert run.base_version.artifact_path == policy.base_model and run.config["beta"] == policy.beta


def test_no_second_run_while_one_is_queued_and_counting_restarts_at_the_snapshot(policy):
    cast_demo_votes(5)
    first = maybe_retrain()
    cast_demo_votes(5, seed=1, voter="other")  # 10 new votes, but a run is queued

    assert maybe_retrain() is None

    TrainingRun.objects.filter(pk=first.pk).update(status=TrainingRun.Status.FAILED)
    policy.cooldown_seconds = 0
    policy.save()
    second = maybe_retrain()
    assert second is not None and second.snapshot.last_vote_id > first.snapshot.last_vote_id
    # Right after a snapshot there are no new votes: nothing more to do.
    TrainingRun.objects.filter(pk=second.pk).update(status=TrainingRun.Status.SUCCEEDED)
    assert maybe_retrain() is None


def test_cool_down_delays_the_next_run(policy):
    cast_demo_votes(5)
    first = maybe_retrain()
    TrainingRun.objects.filter(pk=first.pk).update(status=TrainingRun.Status.SUCCEEDED)
    cast_demo_votes(5, seed=1, voter="other")

    assert maybe_retrain() is None
    later = maybe_retrain(now=timezone.now() + timedelta(seconds=policy.cooldown_seconds + 1))
    assert later is not None


def test_each_project_is_decided_on_its_own_votes(policy, tmp_path):
    from projects.services import create_project

    other = create_project("other")
    other_policy = get_policy(other)
    other_policy.min_new_votes, other_policy.base_model = 10, loadable_artifact(tmp_path / "other-base")
    other_policy.save()
    cast_demo_votes(5)  # 10 votes in the default project, none in the other

    started = scheduler.maybe_retrain()

    assert [run.project for run in started] == [policy.project]
    assert not TrainingRun.objects.filter(project=other).exists()
    assert not DatasetSnapshot.objects.filter(project=other).exists()


def test_disabled_policy_never_retrains(policy):
    policy.enabled = False
    policy.save()
    cast_demo_votes(10)
    assert maybe_retrain() is None


def test_install_schedule_is_idempotent_and_keeps_admin_edits(committed_db):
    from django_celery_beat.models import PeriodicTask

    install_schedule()
    task = PeriodicTask.objects.get(task="training.tasks.maybe_retrain")
    task.enabled = False  # an admin paused it
    task.save()
    install_schedule()

    assert PeriodicTask.objects.filter(task="training.tasks.maybe_retrain").count() == 1
    assert PeriodicTask.objects.get(task="training.tasks.maybe_retrain").enabled is False
    assert PeriodicTask.objects.filter(task="training.tasks.reap_orphaned_runs").count() == 1
    assert PeriodicTask.objects.get(task="training.tasks.check_waiting_gates").queue == "default"
