"""The evaluation gate: every chosen judge must say PROMOTE; the verdicts, one sentence each, are
stored and shown; judges that collect evidence keep the candidate "collecting" until beat's check
decides; a worse candidate is never promoted and a better one is.

The candidates are real models: the demo model fine-tuned on the right sums (better) and the demo
model with noise in its weights (worse), built once per session (tests/training/helpers.py).
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from feedback.content import prompt_sha256
from feedback.models import Generation
from feedback.services.queue import claim_next_generation
from tests.feedback.helpers import key_client
from tests.training.llm_stand_in import StandInJudge
from training import gate, registry, runs
from training.gate import HELDOUT_OUTPUT_PROMPTS, combine, evaluate_candidate, heldout_prompts, store_heldout_outputs
from training.judges import Outcome, Verdict, heldout
from training.kto.demo import correct_answer, demo_prompts, simulated_annotator
from training.models import ModelVersion, ServedCompletion, TrainingRun
from training.policy import gate_policy
from training.routing import version_for_request
from training.runner import _export_splits, new_run_dir
from training.selectors import active_version

State = ModelVersion.EvaluationState


def _verdict(outcome: Outcome, name: str = "x") -> Verdict:
    return Verdict(name, outcome, f"{name} says {outcome}")


def test_all_judges_must_promote_and_a_negative_verdict_is_final():
    promote, reject, wait, inconclusive = Outcome.PROMOTE, Outcome.REJECT, Outcome.WAIT, Outcome.INCONCLUSIVE
    assert combine([_verdict(promote), _verdict(promote)]) == promote
    assert combine([_verdict(promote), _verdict(wait)]) == wait
    assert combine([_verdict(wait), _verdict(inconclusive)]) == inconclusive  # no point waiting: never promoted
    assert combine([_verdict(inconclusive), _verdict(reject), _verdict(wait)]) == reject
    assert combine([]) == inconclusive


def test_the_heldout_judge_refuses_a_holdout_below_the_minimum(gated_candidate, demo_model_dir, active_demo_version):
    candidate = gated_candidate(demo_model_dir, holdout_prompts=5, judges="heldout", min_holdout_examples=30)
    verdict = heldout.judge(candidate, active_demo_version, gate_policy(candidate.created_by_run.config))
    assert verdict.outcome == Outcome.INCONCLUSIVE
    assert verdict.sentence == "held-out set has 10 examples, fewer than the minimum of 30: inconclusive, not promoted"


@pytest.mark.slow
def test_heldout_and_llm_judges_reject_a_worse_candidate_and_promote_a_better_one(
    gated_candidate, demo_variants, active_demo_version, admin_user, monkeypatch
):
    """One gate pass per candidate asks both judges (each verdict is checked on its own); the LLM
    judge talks to a real HTTP server through the openai client. (The demo judge's rule has unit
    tests; it turns the whole loop in test_end_to_end.py.)"""
    monkeypatch.setenv("PROSPECT_TEST_JUDGE_KEY", "judge-secret")
    with StandInJudge(api_key="judge-secret", garbage_every=7) as server:
        options = {
            "judges": "heldout,llm",
            "judge_prompts": HELDOUT_OUTPUT_PROMPTS,  # the LLM judge reuses the compare page's outputs
            "min_holdout_examples": 60,
            "llm_judge_url": server.url,
            "llm_judge_model": "arithmetic-stand-in",
            "llm_judge_api_key_env": "PROSPECT_TEST_JUDGE_KEY",
        }
        worse = evaluate_candidate(gated_candidate(demo_variants["worse"], **options))
        requests_for_worse = server.requests
        better = evaluate_candidate(gated_candidate(demo_variants["better"], **options))

    verdicts = worse.metrics["gate"]["verdicts"]
    assert {name: v["outcome"] for name, v in verdicts.items()} == {"heldout": "reject", "llm": "reject"}
    assert worse.status == ModelVersion.Status.CANDIDATE and worse.evaluation_state == State.DONE
    assert worse.status_reason.startswith("not promoted: candidate raises the held-out KTO loss by ")
    assert verdicts["heldout"]["evidence"]["holdout_examples"] == 80
    assert verdicts["llm"]["evidence"]["win_rate"] < 0.5

    verdicts = better.metrics["gate"]["verdicts"]
    assert {name: v["outcome"] for name, v in verdicts.items()} == {"heldout": "promote", "llm": "promote"}
    assert better.status == ModelVersion.Status.ACTIVE and active_version() == better
    assert better.status_reason.startswith("auto-promoted by the gate: candidate lowers the held-out KTO loss by ")
    assert "; LLM judge arithmetic-stand-in: candidate wins " in better.status_reason
    assert verdicts["heldout"]["evidence"]["ci_low"] > 0
    llm = verdicts["llm"]["evidence"]
    assert llm["ci_low"] > 0.5 and llm["requests"] > 0
    # Every 7th answer of the server was garbage: counted, and said in the sentence.
    assert llm["unparseable"] == server.requests // 7 - requests_for_worse // 7  # this gate pass's garbage
    assert (
        llm["unparseable"] > 0
        and f"{llm['unparseable']} of {llm['requests']} answers unparseable" in verdicts["llm"]["sentence"]
    )
    # The candidate's own numbers at the top of its metrics (the Models page's columns).
    assert better.metrics["holdout"]["n_examples"] == 80

    client = Client()
    client.force_login(admin_user)
    page = client.get(reverse("training:run_detail", args=[better.created_by_run_id])).content.decode()
    assert 'id="run-gate"' in page and 'data-judge="llm" data-outcome="promote"' in page
    assert "answers unparseable" in page
    models_page = client.get(reverse("training:versions")).content.decode()
    assert "candidate lowers the held-out KTO loss" in models_page


def _end_users(client, first: int, count: int, *, prompt_seed: int) -> dict[int, int]:
    """`count` end users each ask one demo question through the generate API and send their thumbs
    (right sum: up) through the vote API; returns {version id: requests it answered}."""
    served: dict[int, int] = {}
    prompts = demo_prompts(count, seed=prompt_seed, split="heldout")
    for index, prompt in zip(range(first, first + count), prompts):
        user = f"end-user-{index}"
        answer = client.post(
            reverse("training:api-generate"), {"prompt": prompt, "max_new_tokens": 5, "user": user}, format="json"
        )
        assert answer.status_code == 200, answer.content
        body = answer.json()
        served[body["model_version_id"]] = served.get(body["model_version_id"], 0) + 1
        vote = client.post(
            reverse("feedback-api:votes"),
            {
                "generation_id": body["generation_id"],
                "desirable": simulated_annotator(prompt, body["completion"]),
                "external_user_id": user,
            },
            format="json",
        )
        assert vote.status_code in (200, 201), vote.content
    return served


def _end_users_until_decided(client, version, first: int, *, prompt_seed: int, rounds: int = 6) -> int:
    """Rounds of 20 new end users until the canary decides `version`; returns how many were sent.
    The gate waits while the difference is unclear, and with ~10 votes a side per round how soon it
    is clear depends on which end users the canary's hash drew, so on the version's id, which
    depends on the tests that ran before on this database."""
    sent = 0
    for round_index in range(rounds):
        _end_users(client, first + sent, 20, prompt_seed=prompt_seed + round_index)
        sent += 20
        gate.check_waiting_gates()
        version.refresh_from_db()
        if version.evaluation_state != State.COLLECTING:
            break
    return sent


@pytest.mark.slow
def test_the_canary_promotes_a_better_candidate_on_live_thumbs_and_rolls_back_a_worse_one(
    gated_candidate, demo_variants, active_demo_version, admin_user
):
    product = key_client()  # the product app's key: generate and votes:write
    canary = {"judges": "canary", "canary_share": 0.5, "canary_min_votes": 15, "holdout_prompts": 0}
    better = evaluate_candidate(gated_candidate(demo_variants["better"], **canary))
    assert better.evaluation_state == State.COLLECTING and better.status == ModelVersion.Status.CANDIDATE
    assert better.canary_share == 0.5 and better.status_reason.startswith(
        "collecting evidence: canary (50 % of traffic)"
    )
    # One end user always meets the same version.
    picks = {version_for_request(better.project, routing_key="end-user-3").pk for _ in range(5)}
    assert len(picks) == 1

    served = _end_users(product, 0, 20, prompt_seed=1)
    assert set(served) == {better.pk, active_demo_version.pk}
    assert gate.check_waiting_gates() == [better.pk]  # not enough votes a side yet: still collecting
    better.refresh_from_db()
    assert better.evaluation_state == State.COLLECTING and better.status == ModelVersion.Status.CANDIDATE
    assert ServedCompletion.objects.filter(version=better).count() == served[better.pk]

    sent = 20 + _end_users_until_decided(product, better, 20, prompt_seed=2)
    evidence = better.metrics["gate"]["verdicts"]["canary"]["evidence"]
    assert better.status == ModelVersion.Status.ACTIVE, better.status_reason
    assert better.evaluation_state == State.DONE and better.canary_share == 0.0
    assert evidence["candidate_votes"] >= 15 and evidence["active_votes"] >= 15
    assert evidence["candidate_votes"] + evidence["active_votes"] == sent  # every end user's thumb, once
    assert evidence["candidate_rate"] > evidence["active_rate"] and evidence["p_better"] < 0.025
    assert "canary: candidate" in better.status_reason and better.status_reason.endswith(": promoted")
    assert gate.check_waiting_gates() == []  # decided once; nothing left to ask

    # A worse candidate against the newly active one: live thumbs roll it back.
    worse = evaluate_candidate(gated_candidate(demo_variants["worse"], **canary))
    assert worse.evaluation_state == State.COLLECTING
    worse_sent = _end_users_until_decided(product, worse, 1000, prompt_seed=20)
    assert worse.status == ModelVersion.Status.REJECTED, worse.status_reason
    assert (
        worse.status_reason.startswith("rejected by the gate: canary: candidate")
        and "rolled back" in worse.status_reason
    )
    assert worse.canary_share == 0.0 and active_version() == better
    # Every end user is answered by the active version again.
    users = range(1000, 1000 + worse_sent)
    assert {version_for_request(better.project, routing_key=f"end-user-{i}").pk for i in users} == {better.pk}

    client = Client()
    client.force_login(admin_user)
    page = client.get(reverse("training:run_detail", args=[worse.created_by_run_id])).content.decode()
    numbers = worse.metrics["gate"]["verdicts"]["canary"]["evidence"]
    assert 'id="run-canary"' in page
    assert f"<td>Candidate</td><td>{numbers['candidate_up']}</td><td>{numbers['candidate_votes']}</td>" in page


def test_a_candidate_promoted_by_hand_while_collecting_closes_its_canary(gated_candidate, demo_model_dir):
    candidate = evaluate_candidate(gated_candidate(demo_model_dir, judges="canary", holdout_prompts=0))
    assert candidate.evaluation_state == State.COLLECTING and candidate.canary_share > 0, candidate.status_reason
    # A redelivered gate task does nothing: the candidate is no longer pending.
    assert evaluate_candidate(candidate).metrics == candidate.metrics

    registry.promote(candidate, reason="promoted by hand")
    gate.check_waiting_gates()
    candidate.refresh_from_db()
    assert candidate.evaluation_state == State.DONE and candidate.canary_share == 0.0
    assert candidate.status == ModelVersion.Status.ACTIVE and candidate.status_reason == "promoted by hand"


@pytest.mark.slow
def test_the_gate_stores_both_versions_outputs_on_the_same_heldout_prompts_never_served(
    demo_loop, loop_redis, demo_model_dir, annotator_user, admin_user
):
    # A holdout below the heldout judge's minimum: the judge measures nothing, the outputs are still stored.
    run = runs.start_run(config={"holdout": 0.3, "judges": "heldout", "min_holdout_examples": 10_000})
    run_dir = new_run_dir(run)
    _export_splits(run, run_dir / "data")
    TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.SUCCEEDED, artifact_dir=str(run_dir))
    run.refresh_from_db()
    candidate = registry.create_candidate_version(
        run, artifact_path=demo_model_dir, is_adapter=False, trained_from=demo_model_dir
    )
    generations_before = Generation.objects.count()

    result = evaluate_candidate(candidate)

    assert result.evaluation_state == "done" and result.status == ModelVersion.Status.CANDIDATE
    assert "fewer than the minimum of 10000: inconclusive, not promoted" in result.status_reason
    prompts = heldout_prompts(run_dir / "data" / "holdout.jsonl")
    assert 0 < len(prompts) <= HELDOUT_OUTPUT_PROMPTS
    assert result.metrics["gate"]["verdicts"]["heldout"]["evidence"]["heldout_output_prompts"] == len(prompts)
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
