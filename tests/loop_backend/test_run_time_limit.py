"""The runner enforces the run's time limit itself: the process group is killed, the run fails."""
from __future__ import annotations

import pytest

from training import runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.runner import execute_run
from training.selectors import active_version

pytestmark = pytest.mark.slow


def test_run_over_its_time_limit_is_killed_and_failed(demo_loop, loop_redis, settings):
    settings.PROSPECT_RUN_POLL_SECONDS = 0.5
    run = runs.start_run(config={"max_steps": 10_000, "time_limit_seconds": 1})

    # This test process plays the gpu worker (the task body is exactly this call).
    assert execute_run(run.pk) is None

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "time limit of 1s exceeded" in run.error
    assert run.exit_code is not None and run.exit_code != 0
    assert not process_alive(run.process_group_id)
    assert active_version() == demo_loop and not ModelVersion.objects.filter(created_by_run=run).exists()
