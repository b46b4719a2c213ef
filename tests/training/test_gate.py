"""The evaluation gate: promote only a candidate better by the margin; otherwise say why."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from feedback.content import prompt_sha256
from feedback.models import Generation
from feedback.services.queue import claim_next_generation
from training import registry, runs
from training.gate import HELDOUT_OUTPUT_PROMPTS, decide, evaluate_candidate, heldout_prompts, store_heldout_outputs
from training.kto.demo import correct_answer
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


@pytest.mark.slow
def test_the_gate_stores_both_versions_outputs_on_the_same_heldout_prompts_never_served(
    demo_loop, loop_redis, demo_model_dir, annotator_user, admin_user
):
    run = runs.start_run(config={"holdout": 0.3, "judge": "none", "promote_margin": 0.01})
    run_dir = new_run_dir(run)
    _export_splits(run, run_dir / "data")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED, artifact_dir=str(run_dir))
    run.refresh_from_db()
    candidate = registry.create_candidate_version(
        run, artifact_path=demo_model_dir, is_adapter=False, trained_from=demo_model_dir
    )
    generations_before = Generation.objects.count()

    result = evaluate_candidate(candidate)

    assert result.evaluation_state == "done"
    prompts = heldout_prompts(run_dir / "data" / "holdout.jsonl")
    assert 0 < len(prompts) <= HELDOUT_OUTPUT_PROMPTS
    assert result.metrics["gate"]["heldout_output_prompts"] == len(prompts)
    # The candidate and the active version it was compared with: outputs on exactly those prompts.
    outputs = {
        version: dict(version.heldout_outputs.values_list("prompt_sha256", "completion"))
        for version in (candidate, demo_loop)
    }
    assert set(outputs[candidate]) == set(outputs[demo_loop]) == {prompt_sha256(prompt) for prompt in prompts}
    # Greedy outputs of the real model: the same weights answer the same, and they are sums it computed.
    assert outputs[candidate] == outputs[demo_loop]
    answers = [outputs[candidate][prompt_sha256(prompt)].strip() for prompt in prompts]
    assert all(answer.lstrip("-").isdigit() for answer in answers)
    assert any(answer == correct_answer(prompt) for prompt, answer in zip(prompts, answers))

    # Never served: nothing entered the annotation queue (every stored item already has its vote).
    assert Generation.objects.count() == generations_before
    assert claim_next_generation(annotator_user) is None

    # The compare page shows them aligned, one row per held-out prompt.
    client = Client()
    client.force_login(admin_user)
    html = client.get(reverse("training:compare") + f"?a={demo_loop.pk}&b={candidate.pk}").content.decode()
    assert html.count('class="card compare-item heldout-item"') == len(prompts)  # none differs: same weights

    # Later gate runs only generate what a version lacks.
    demo_loop.heldout_outputs.filter(prompt_sha256=prompt_sha256(prompts[0])).delete()
    assert store_heldout_outputs(demo_loop, prompts) == 1
    assert store_heldout_outputs(candidate, prompts) == 0
    assert dict(demo_loop.heldout_outputs.values_list("prompt_sha256", "completion")) == outputs[candidate]
