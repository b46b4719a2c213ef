"""The evaluation gate: promote only a candidate better by the margin; otherwise say why."""

from __future__ import annotations

import pytest

from training import registry, runs
from training.gate import decide, evaluate_candidate
from training.models import ModelVersion, TrainingRun
from training.runner import _export_splits, new_run_dir
from training.selectors import active_version


def _measurements(candidate: dict, active: dict) -> dict:
    return {"active_version": "base", "candidate": candidate, "active": active}


def test_judged_candidate_needs_the_margin():
    assert decide(_measurements({"demo_accuracy": 0.62}, {"demo_accuracy": 0.60}), 0.01, judged=True)[0]
    promote, reason = decide(_measurements({"demo_accuracy": 0.605}, {"demo_accuracy": 0.60}), 0.01, judged=True)
    assert not promote and "0.605 vs 0.600" in reason and "margin +0.010" in reason


def test_unjudged_candidate_needs_better_reward_accuracy_and_no_worse_loss():
    better = {"holdout": {"reward_accuracy": 0.8, "loss": 0.40}}
    worse_loss = {"holdout": {"reward_accuracy": 0.8, "loss": 0.60}}
    active = {"holdout": {"reward_accuracy": 0.5, "loss": 0.50}}
    assert decide(_measurements(better, active), 0.05, judged=False)[0]
    assert not decide(_measurements(worse_loss, active), 0.05, judged=False)[0]
    assert not decide(_measurements({}, {}), 0.0, judged=False)[0]


@pytest.mark.slow
def test_candidate_no_better_than_the_active_version_stays_a_candidate(demo_loop, loop_redis, demo_model_dir):
    # The candidate is the active model's own weights: it cannot beat itself by a positive margin.
    run = runs.start_run(config={"holdout": 0.3, "judge": "demo", "judge_prompts": 16, "promote_margin": 0.01})
    run_dir = new_run_dir(run)
    _export_splits(run, run_dir / "data")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED, artifact_dir=str(run_dir))
    run.refresh_from_db()
    candidate = registry.create_candidate_version(
        run, artifact_path=demo_model_dir, is_adapter=False, trained_from=demo_model_dir
    )

    result = evaluate_candidate(candidate)

    assert result.status == ModelVersion.Status.CANDIDATE and result.evaluation_state == "done"
    assert result.status_reason.startswith("not promoted: demo accuracy")
    assert result.metrics["demo_accuracy"] == result.metrics["gate"]["active"]["demo_accuracy"]
    assert result.metrics["gate"]["holdout_examples"] > 0 and "loss" in result.metrics["holdout"]
    assert active_version() == demo_loop
    # A second delivery of the gate task does not evaluate again.
    assert evaluate_candidate(result).metrics == result.metrics
