"""POST /api/v1/generate: the active version's completion, stored as a generation to vote on.

Generate needs a project API key with the `generate` scope: without a key it answers 401, with a key
lacking the scope 403, and a browser session (even a project admin's) is not a key.
"""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from feedback.models import Generation, Vote
from tests.feedback.helpers import key_client, make_annotator
from training.models import ModelVersion

# --- generate api ----------------------------------------


@pytest.fixture
def token_client(db):
    """A product app's key of the default project (generations, votes, generate, read)."""
    return key_client()


@pytest.mark.django_db
def test_generate_returns_a_completion_of_the_active_version(token_client, active_demo_version):
    response = token_client.post(
        reverse("training:api-generate"), {"prompt": "What is 12+7?", "max_new_tokens": 5}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    generation = Generation.objects.get(pk=body["generation_id"])
    assert body["completion"] == generation.completion
    assert generation.completion.strip()
    assert body["model_version"] == active_demo_version.name
    assert generation.model_version == active_demo_version
    assert generation.prompt.content == "What is 12+7?"


@pytest.mark.django_db
def test_the_end_user_can_vote_for_the_returned_generation(token_client, active_demo_version):
    body = token_client.post(
        reverse("training:api-generate"), {"prompt": "What is 3+4?", "max_new_tokens": 5}, format="json"
    ).json()
    vote = token_client.post(
        reverse("feedback-api:votes"),
        {"generation_id": body["generation_id"], "desirable": True, "external_user_id": "end-user-1"},
        format="json",
    )
    assert vote.status_code == 201, vote.content
    assert Vote.objects.filter(
        generation_id=body["generation_id"], external_user_id="end-user-1", api_client=token_client.api_client
    ).exists()


@pytest.mark.django_db
def test_chat_messages_are_accepted(token_client, active_demo_version):
    response = token_client.post(
        reverse("training:api-generate"),
        {"prompt": [{"role": "user", "content": "What is 20+22?"}], "max_new_tokens": 5},
        format="json",
    )
    assert response.status_code == 200, response.content
    generation = Generation.objects.get(pk=response.json()["generation_id"])
    assert generation.prompt.content == [{"role": "user", "content": "What is 20+22?"}]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "payload, field",
    [
        ({}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": [{"role": "user"}]}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "What is 1+1?", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "What is 1+1?", "temperature": -1}, "temperature"),
    ],
)
def test_bad_input_names_the_field_and_saves_nothing(token_client, active_demo_version, payload, field):
    response = token_client.post(reverse("training:api-generate"), payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Generation.objects.count() == 0


@pytest.mark.django_db
def test_no_active_version_is_a_clear_503(token_client):
    assert not ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).exists()
    response = token_client.post(reverse("training:api-generate"), {"prompt": "What is 1+1?"}, format="json")
    assert response.status_code == 503
    assert "active" in response.json()["detail"]


@pytest.mark.django_db
def test_the_endpoint_is_in_the_openapi_schema(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    operation = schema["paths"]["/api/v1/generate/"]["post"]
    assert operation["operationId"] == "generate"
    assert "200" in operation["responses"]


# --- generate api auth ----------------------------------------


@pytest.mark.django_db
def test_generate_without_a_key_is_refused():
    response = APIClient().post(reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json")
    assert response.status_code == 401
    assert Generation.objects.count() == 0


@pytest.mark.django_db
def test_generate_without_the_generate_scope_is_refused(active_demo_version):
    response = key_client(scopes="votes:write,read").post(
        reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json"
    )
    assert response.status_code == 403 and "'generate'" in response.json()["detail"]
    assert Generation.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["annotator", "admin"])
def test_generate_from_a_browser_session_is_refused(active_demo_version, role):
    client = APIClient()
    client.force_login(make_annotator(f"user-{role}", role=role))
    response = client.post(reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json")
    assert response.status_code == 401
    assert Generation.objects.count() == 0


@pytest.mark.django_db
def test_generate_with_a_wrong_key_is_refused():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key not-a-real.key")
    response = client.post(reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json")
    assert response.status_code == 401
    assert Generation.objects.count() == 0


@pytest.mark.django_db
def test_feedback_api_writes_without_a_key_are_refused():
    # The product-app side of the loop: generations and votes also need a key.
    client = APIClient()
    for name in ("feedback-api:generations", "feedback-api:votes"):
        response = client.post(reverse(name), {}, format="json")
        assert response.status_code == 401, name
