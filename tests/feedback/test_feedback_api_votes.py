"""POST /api/v1/votes/: one vote per voter per generation, from the caller or an end user."""
from __future__ import annotations

import pytest

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db


def test_an_end_user_vote_is_recorded_once(api_client):
    generation = add_generation()
    body = {"generation_id": generation.pk, "desirable": True, "external_user_id": "end-user-7", "comment": "nice"}
    first = api_client.post("/api/v1/votes/", body, format="json")
    # A repeated submission (even with another label) changes nothing: the first vote stands.
    again = api_client.post("/api/v1/votes/", {**body, "desirable": False}, format="json")
    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
    vote = Vote.objects.get()
    assert (vote.external_user_id, vote.annotator, vote.desirable, vote.comment, vote.source) == (
        "end-user-7", None, True, "nice", "api")


def test_without_an_external_user_the_caller_is_the_voter(api_client, api_user):
    generation = add_generation()
    response = api_client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": False}, format="json")
    assert response.status_code == 201
    vote = Vote.objects.get()
    assert (vote.annotator, vote.external_user_id, vote.desirable) == (api_user, None, False)


def test_two_end_users_on_one_generation_are_two_votes(api_client):
    generation = add_generation()
    for user, label in (("u1", True), ("u2", False)):
        assert api_client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": label,
                                                  "external_user_id": user}, format="json").status_code == 201
    assert sorted(Vote.objects.values_list("external_user_id", "desirable")) == [("u1", True), ("u2", False)]


def test_vote_by_the_generation_external_id(api_client):
    generation = add_generation(external_id="chat-msg-42")
    response = api_client.post(
        "/api/v1/votes/", {"generation_external_id": "chat-msg-42", "desirable": True, "external_user_id": "u"}, format="json")
    assert response.status_code == 201 and response.json()["generation_id"] == generation.pk


def test_unknown_generation_is_404_and_saves_nothing(api_client):
    by_id = api_client.post("/api/v1/votes/", {"generation_id": 12345, "desirable": True}, format="json")
    by_external = api_client.post("/api/v1/votes/", {"generation_external_id": "nope", "desirable": True}, format="json")
    assert by_id.status_code == 404 and "generation_id" in by_id.json()
    assert by_external.status_code == 404 and "generation_external_id" in by_external.json()
    assert Vote.objects.count() == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"desirable": True}, "non_field_errors"),
        ({"generation_id": 1, "generation_external_id": "x", "desirable": True}, "non_field_errors"),
        ({"generation_id": 1}, "desirable"),
        ({"generation_id": 1, "desirable": "maybe"}, "desirable"),
        ({"generation_id": "one", "desirable": True}, "generation_id"),
    ],
)
def test_bad_votes_name_the_field(api_client, body, field):
    response = api_client.post("/api/v1/votes/", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert Vote.objects.count() == 0
