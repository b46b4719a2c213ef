"""The vote endpoint (a plain Django view) answers exactly as the DRF view it replaced did:
DRF's authentication precedence and messages, JSON errors, the first vote standing, the schema."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db
URL = "/api/v1/votes/"


def test_no_credentials_is_drfs_401_with_its_challenge():
    response = APIClient().post(URL, {"generation_id": 1, "desirable": True}, format="json")
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(
    "header, detail",
    [
        ("Token", "Invalid token header. No credentials provided."),
        ("Token a b", "Invalid token header. Token string should not contain spaces."),
        ("Token " + "0" * 40, "Invalid token."),
    ],
)
def test_bad_token_headers_get_drfs_messages(header, detail):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL, {"generation_id": 1, "desirable": True}, format="json")
    assert (response.status_code, response.json()) == (401, {"detail": detail})


@pytest.mark.parametrize("body", [{"desirable": "maybe"}, {"generation_external_id": "x", "desirable": True}])
def test_a_wrong_token_is_401_whatever_the_body(body):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.post(URL, body, format="json").status_code == 401


def test_other_methods_are_405_for_a_caller_and_401_for_a_stranger(api_client):
    response = api_client.get(URL)
    assert (response.status_code, response.json()) == (405, {"detail": 'Method "GET" not allowed.'})
    assert APIClient().get(URL).status_code == 401


@pytest.mark.parametrize("raw", [b"{not json", b'{"generation_id": 1, "desirable": NaN}'])
def test_malformed_json_is_a_400_parse_error(api_client, raw):
    response = api_client.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400 and response.json()["detail"].startswith("JSON parse error - ")
    assert not Vote.objects.exists()


def test_an_empty_body_names_the_missing_fields(api_client):
    response = api_client.generic("POST", URL, b"", content_type="application/json")
    assert response.status_code == 400 and "desirable" in response.json()


def test_a_repeat_returns_the_standing_vote(api_client, api_user):
    generation = add_generation()
    first = api_client.post(URL, {"generation_id": generation.pk, "desirable": True}, format="json")
    again = api_client.post(URL, {"generation_id": generation.pk, "desirable": False}, format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {"id": first.json()["id"], "generation_id": generation.pk, "desirable": True, "created": False}
    assert list(Vote.objects.values_list("annotator_id", "desirable")) == [(api_user.pk, True)]


def test_the_schema_still_documents_the_vote_endpoint(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/v1/votes/"]["post"]
    assert set(schema["paths"]["/api/v1/votes/"]) == {"post"}
    assert operation["operationId"] == "record_vote"
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VoteIn"}
    assert set(operation["responses"]) == {"200", "201"}
    assert {name for requirement in operation["security"] for name in requirement} == {"feedbackTokenAuth", "cookieAuth"}
