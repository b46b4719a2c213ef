"""A crashed run does not use up the new votes; the reaper tells a worker from a later process
that reuses its pid (a restarted container)."""

from __future__ import annotations

import os
import socket

import pytest
from django.utils import timezone

from feedback.models import DatasetSnapshot, Vote
from projects.selectors import default_project
from tests.training.helpers import cast_demo_votes
from training.models import TrainingRun
from training.policy import get_policy, retrain_decision
from training.processes import process_start_id, worker_alive
from training.runs import reap_orphaned_runs
from training.selectors import new_votes_since_last_trained_snapshot

pytestmark = pytest.mark.django_db


def run_on_snapshot(status: str, **fields) -> TrainingRun:
    last_vote = Vote.objects.order_by("-pk").first()
    snapshot = DatasetSnapshot.objects.create(
        project=default_project(), path="/nonexistent", sha256="0" * 64, last_vote_id=last_vote.pk
    )
    return TrainingRun.objects.create(
        project=default_project(),
        snapshot=snapshot,
        status=status,
        desirable_weight=1.0,
        undesirable_weight=1.0,
        **fields,
    )


@pytest.mark.parametrize("crashed", [TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED])
def test_the_votes_of_a_crashed_run_still_count_as_new(crashed):
    cast_demo_votes(5)  # 10 votes
    policy = get_policy()
    policy.min_new_votes, policy.cooldown_seconds = 10, 0
    policy.save()
    run = run_on_snapshot(crashed)
    TrainingRun.objects.filter(pk=run.pk).update(created_at=timezone.now() - timezone.timedelta(hours=2))
    assert new_votes_since_last_trained_snapshot() == 10
    assert retrain_decision(policy)[0] is True


def test_a_succeeded_or_running_run_uses_up_the_votes_of_its_snapshot():
    cast_demo_votes(5)
    run = run_on_snapshot(TrainingRun.Status.SUCCEEDED)
    assert new_votes_since_last_trained_snapshot() == 0
    cast_demo_votes(2, seed=1)
    assert new_votes_since_last_trained_snapshot() == 4
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.FAILED)
    run_on_snapshot(TrainingRun.Status.RUNNING)
    assert new_votes_since_last_trained_snapshot() == 0


def test_a_start_id_names_one_process_not_its_pid():
    me = process_start_id(os.getpid())
    assert me and str(os.getpid()) in me
    assert process_start_id(os.getpid()) == me  # stable for the life of the process
    assert worker_alive(os.getpid(), me)
    # Same pid, another start: what a restarted container's new worker looks like.
    boot, pid, started = me.rsplit(":", 2)
    assert not worker_alive(os.getpid(), f"{boot}:{pid}:{int(started) - 1}")


def test_the_reaper_fails_a_run_whose_pid_now_belongs_to_another_process():
    boot, pid, started = process_start_id(os.getpid()).rsplit(":", 2)
    now = timezone.now()
    cast_demo_votes(1)
    common = dict(started_at=now, heartbeat_at=now, worker_hostname=socket.gethostname(), worker_pid=os.getpid())
    reused = run_on_snapshot(TrainingRun.Status.RUNNING, worker_start_id=f"{boot}:{pid}:{int(started) - 1}", **common)
    alive = run_on_snapshot(TrainingRun.Status.RUNNING, worker_start_id=process_start_id(os.getpid()), **common)
    assert reap_orphaned_runs() == [reused.pk]
    reused.refresh_from_db()
    alive.refresh_from_db()
    assert reused.status == TrainingRun.Status.FAILED and "died" in reused.error
    assert alive.status == TrainingRun.Status.RUNNING
