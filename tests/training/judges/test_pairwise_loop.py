"""The pairwise judge's loop, end to end over HTTP and through the gate: the gate takes up a worse
and then a better candidate (policy judges = "pairwise"), starts blind comparisons against the
active version and waits (collecting evidence); simulated annotators answer in the browser protocol
(a live server; log in, read the page, POST the form exactly as the page's keys submit it, CSRF
token included); beat's periodic check asks the judge again; the worse candidate is not promoted
and the better one is.

"Better" and "worse" are honest: the outputs are answers to held-out demo questions, right or
wrong by the demo task's program judge, and the simulated annotators are that program judge
reading only what the page shows (no version names, sides drawn at random).
"""

from __future__ import annotations

import html
import re

import httpx
import pytest

from feedback.models import Comparison, ComparisonVote
from tests.feedback.helpers import PASSWORD, add_heldout_outputs, add_version, make_annotator
from training.gate import check_waiting_gates, evaluate_candidate
from training.kto.demo import correct_answer, demo_prompts, simulated_annotator
from training.models import ModelVersion
from training.policy import get_policy
from training.selectors import active_version

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

N_PROMPTS = 40


def demo_outputs():
    """{prompt: right answer} for 40 held-out demo questions, and the two ways to get one wrong."""
    prompts = demo_prompts(N_PROMPTS, seed=13, split="heldout")
    right = {prompt: correct_answer(prompt) for prompt in prompts}
    slipped = {prompt: str(int(answer) + 10) for prompt, answer in right.items()}  # the demo model's own mistake
    off_by_one = {prompt: str(int(answer) - 1) for prompt, answer in right.items()}
    return prompts, right, slipped, off_by_one


def build_versions(artifact_path: str):
    """active: right on every other question (50 %); better: right on 80 %; worse: on none (off by one).
    All three point at a real model directory: promotion checks that the artifact loads."""
    prompts, right, slipped, off_by_one = demo_outputs()
    active = add_version("base", status=ModelVersion.Status.ACTIVE, artifact_path=artifact_path)
    better, worse = (
        add_version(name, artifact_path=artifact_path, evaluation_state=ModelVersion.EvaluationState.PENDING)
        for name in ("run-1", "run-2")
    )
    add_heldout_outputs(active, {p: right[p] if i % 2 == 0 else slipped[p] for i, p in enumerate(prompts)})
    add_heldout_outputs(better, {p: right[p] if i % 5 else slipped[p] for i, p in enumerate(prompts)})
    add_heldout_outputs(worse, {p: off_by_one[p] for p in prompts})
    return active, better, worse


def text_of(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}">(.*?)</div>', page, re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


def form_token(page: str, form_id: str) -> str:
    form = page[page.index(f'id="{form_id}"') :]
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form).group(1)


class SimulatedAnnotator:
    """One person at a browser: a session cookie, the page's forms, the demo task's program judge."""

    def __init__(self, base_url: str, username: str):
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)
        login = self.http.get("/accounts/login/").text
        response = self.http.post(
            "/accounts/login/",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": form_token(login, "login-form")},
        )
        assert response.status_code == 302, response.text[:500]
        self.answered = 0

    def answer_one(self) -> bool:
        """Answer the comparison on screen; False when the page shows none."""
        page = self.http.get("/annotate/").text
        match = re.search(r'data-comparison-item-id="(\d+)"', page)
        if match is None:
            return False
        prompt = text_of(page, "prompt-text")
        left_ok = simulated_annotator(prompt, text_of(page, "output-left"))
        right_ok = simulated_annotator(prompt, text_of(page, "output-right"))
        choice = "tie" if left_ok == right_ok else ("left" if left_ok else "right")
        # What the page's key (a / l / t) submits: the form's fields plus the pressed button's value.
        response = self.http.post(
            "/annotate/compare/",
            data={"csrfmiddlewaretoken": form_token(page, "compare-form"), "item_id": match.group(1), "choice": choice},
        )
        assert response.status_code == 302 and response.headers["location"] == "/annotate/"
        self.answered += 1
        return True


def gate_until_decided(candidate, annotators) -> ModelVersion:
    """Take the candidate through the gate, then let the annotators answer, one item each per
    round, with beat's periodic check after every round, until the gate has decided."""
    candidate = evaluate_candidate(candidate)
    assert candidate.evaluation_state == ModelVersion.EvaluationState.COLLECTING, candidate.status_reason
    while candidate.evaluation_state == ModelVersion.EvaluationState.COLLECTING:
        answered = [annotator.answer_one() for annotator in annotators]
        assert candidate.pk in check_waiting_gates()
        candidate.refresh_from_db()
        if not any(answered):
            break
    return candidate


def test_simulated_annotators_in_the_browser_protocol_promote_the_better_candidate_not_the_worse(
    live_server, demo_model_dir
):
    active, better, worse = build_versions(demo_model_dir)
    policy = get_policy()
    policy.judges = "pairwise"  # the judge's defaults otherwise: 95 %, 20 comparisons
    policy.save()

    annotators = [SimulatedAnnotator(live_server.url, make_annotator(name).username) for name in ("ann", "bo")]
    # CSRF stays on: the same POST without the page's token is refused.
    forged = annotators[0].http.post("/annotate/compare/", data={"item_id": "1", "choice": "left"})
    assert forged.status_code == 403 and not ComparisonVote.objects.exists()

    worse = gate_until_decided(worse, annotators)
    # worse vs active: they differ on all 40; worse loses where the active version is right and
    # both-wrong pairs are ties. Decided before all 40 were answered: the comparison closed and
    # annotators were served no more of it. Evidence gathered from people rejects the candidate.
    assert worse.evaluation_state == ModelVersion.EvaluationState.DONE
    assert worse.status == ModelVersion.Status.REJECTED and active_version() == active
    verdict = worse.metrics["gate"]["verdicts"]["pairwise"]
    assert verdict["outcome"] == "reject", worse.status_reason
    assert re.fullmatch(
        r"candidate wins 2\d % of \d\d blind comparisons \(\d+ ties counted half\), 95 % CI \d+–4\d %: "
        r"not promoted \(worse\)",
        verdict["sentence"],
    )
    assert verdict["sentence"] in worse.status_reason
    answered_on_worse = verdict["evidence"]["answered"]
    assert 20 <= answered_on_worse < 40 and verdict["evidence"]["wins"] == 0
    assert Comparison.objects.get(version_a=active, version_b=worse).closed_at is not None

    better = gate_until_decided(better, annotators)
    # better vs active: they differ on 20 questions; better is right on 16 of those.
    assert better.status == ModelVersion.Status.ACTIVE and active_version() == better
    verdict = better.metrics["gate"]["verdicts"]["pairwise"]
    assert verdict["outcome"] == "promote"
    assert verdict["sentence"] == "candidate wins 80 % of 20 blind comparisons, 95 % CI 58–92 %: promoted"
    assert verdict["evidence"]["identical_outputs_skipped"] == 20
    assert all(annotator.answered > 5 for annotator in annotators)  # the work was shared
    assert ComparisonVote.objects.count() == 20 + answered_on_worse
