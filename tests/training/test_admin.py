"""The training policy's admin page exposes the gate: judges as checkboxes (stored comma-separated),
confidence, holdout minimum, the canary's share and votes, the LLM judge's endpoint."""

from __future__ import annotations

import pytest
from django.urls import reverse

from training.admin import TrainingPolicyForm
from training.policy import get_policy

GATE_FIELDS = (
    "confidence",
    "min_holdout_examples",
    "canary_share",
    "canary_min_votes",
    "canary_max_votes",
    "llm_judge_url",
    "llm_judge_model",
    "llm_judge_prompt",
    "llm_judge_api_key_env",
)


def _posted(form: TrainingPolicyForm) -> dict:
    data = {}
    for name in form.fields:
        value = form[name].value()
        if isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    return data


@pytest.mark.django_db
def test_the_policy_page_edits_the_gate(client, admin_user):
    policy = get_policy()
    client.force_login(admin_user)
    url = reverse("admin:training_trainingpolicy_change", args=[policy.pk])
    page = client.get(url).content.decode()
    for name in GATE_FIELDS:
        assert f'name="{name}"' in page, name
    for judge in ("demo", "heldout", "pairwise", "canary", "llm"):
        assert f'type="checkbox" name="judges" value="{judge}"' in page, judge

    data = _posted(TrainingPolicyForm(instance=policy))
    data.update(
        judges=["heldout", "canary"], confidence="0.99", canary_share="0.05", llm_judge_url="http://judge:8000/v1"
    )
    response = client.post(url, {**data, "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:3000]
    policy.refresh_from_db()
    assert policy.judges == "heldout,canary" and policy.judge_names == ["heldout", "canary"]
    assert (policy.confidence, policy.canary_share, policy.llm_judge_url) == (0.99, 0.05, "http://judge:8000/v1")

    # A template without the answers' placeholders is refused, naming what is missing; nothing saved.
    data.update(llm_judge_prompt="Which is better, {answer_a} or {answer_b}?", judges=["llm"])
    response = client.post(url, {**data, "_save": "Save"})
    assert response.status_code == 200 and "the prompt template lacks {prompt}" in response.content.decode()
    policy.refresh_from_db()
    assert policy.judges == "heldout,canary"
