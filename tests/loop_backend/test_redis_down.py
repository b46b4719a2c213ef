"""Redis is down: votes still save, a requested run is kept, and scheduling catches up once it is back."""
from __future__ import annotations

import pytest

from feedback.models import Vote
from tests.loop_backend.conftest import point_celery_at, wait_for
from tests.loop_backend.helpers import cast_demo_votes
from training import runs
from training.models import TrainingRun
from training.scheduler import install_schedule

pytestmark = pytest.mark.slow


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
    wait_for(lambda: TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.SUCCEEDED, 300,
             "the run requested during the outage to be trained", on_timeout=worker.log)
    run.refresh_from_db()
    assert run.enqueued_at is not None and run.exit_code == 0
    assert TrainingRun.objects.count() == 1
