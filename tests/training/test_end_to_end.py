"""End to end with real worker processes and beat:
votes → snapshot → run → gate → promote → a new generation produced by the new version."""

from __future__ import annotations

import pytest

from feedback.models import Generation, Vote
from tests.helpers import wait_for
from training.models import ModelVersion, TrainingRun
from training.policy import get_policy
from training.scheduler import install_schedule
from training.selectors import active_version

pytestmark = pytest.mark.slow


def test_votes_become_a_promoted_version_that_serves_new_generations(demo_loop, start_worker, loop_redis):
    policy = get_policy()
    # The policy starts a run on its own once these votes exist; the gate judges with the demo
    # task's simulated annotator on held-out prompts and the holdout split. A negative margin
    # promotes any candidate the gate could measure (the demo judge asks no significance then): the
    # gate's verdicts have their own tests (test_gate.py, judges/); here the loop's wiring is under test.
    policy.min_new_votes = Vote.objects.count()
    policy.holdout, policy.judges, policy.promote_margin = 0.2, "demo", -1.0
    policy.save()
    install_schedule(check_seconds=1)

    # One worker for both queues plus embedded beat, launching training through `accelerate launch`.
    worker = start_worker("default,gpu", beat=True, env={"PROSPECT_TRAIN_LAUNCHER": "accelerate"})

    run_id = wait_for(
        lambda: TrainingRun.objects.values_list("pk", flat=True).first(),
        120,
        "beat to start a run",
        on_timeout=worker.log,
    )
    wait_for(
        lambda: active_version() != demo_loop,
        480,
        "the gate to promote the new version",
        on_timeout=lambda: worker.log()[-6000:] + repr(list(ModelVersion.objects.values())),
    )

    run = TrainingRun.objects.get(pk=run_id)
    new_version = active_version()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.progress == 1.0 and run.metrics
    assert new_version.created_by_run == run and new_version.parent == demo_loop
    assert "auto-promoted by the gate" in new_version.status_reason
    gate = new_version.metrics["gate"]
    demo_verdict = gate["verdicts"]["demo"]
    assert gate["judges"] == ["demo"] and gate["decision"] == "promoted" and demo_verdict["outcome"] == "promote"
    assert demo_verdict["evidence"]["prompts"] == policy.judge_prompts
    assert demo_verdict["sentence"] in new_version.status_reason
    assert 0.0 <= new_version.metrics["demo_accuracy"] <= 1.0
    # The gate stored both versions' greedy outputs on the run's held-out prompts (the compare page).
    assert new_version.heldout_outputs.exists() and demo_loop.heldout_outputs.exists()
    assert run.snapshot.last_vote_id == Vote.objects.latest("pk").pk

    # The annotation queue is filled by the gpu worker from the active version: the new one.
    from training.tasks import fill_queue

    fill_queue.delay(n=3)
    wait_for(
        lambda: Generation.objects.filter(model_version=new_version).exists(),
        180,
        "a generation by the new version",
        on_timeout=worker.log,
    )
