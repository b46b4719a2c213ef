"""A revoked token or a deactivated user is refused on the very next request, cache or not."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db


def vote(client, generation, voter=None):
    body = {"generation_id": generation.pk, "desirable": True}
    if voter:
        body["external_user_id"] = voter
    return client.post("/api/v1/votes/", body, format="json")


@pytest.fixture(autouse=True)
def long_token_memory(settings):
    # The DRF endpoints' memory of verified tokens at its longest: it must not matter.
    settings.API_TOKEN_CACHE_SECONDS = 3600


def test_a_revoked_token_cannot_vote_right_after_voting(api_client, api_user):
    generation = add_generation()
    assert vote(api_client, generation, "u1").status_code == 201
    Token.objects.filter(user=api_user).delete()
    refused = vote(api_client, generation, "u2")
    assert refused.status_code == 401 and refused.json() == {"detail": "Invalid token."}
    assert list(Vote.objects.values_list("external_user_id", flat=True)) == ["u1"]


def test_a_revoked_token_cannot_repeat_a_vote_either(api_client, api_user):
    # A repeat inserts nothing; the answer must still be 401, not "already voted".
    generation = add_generation()
    assert vote(api_client, generation).status_code == 201
    Token.objects.filter(user=api_user).delete()
    assert vote(api_client, generation).status_code == 401


def test_a_deactivated_user_is_refused_at_once(api_client, api_user):
    generation = add_generation()
    assert vote(api_client, generation, "u1").status_code == 201
    get_user_model().objects.filter(pk=api_user.pk).update(is_active=False)
    refused = vote(api_client, generation, "u2")
    assert refused.status_code == 401 and refused.json() == {"detail": "User inactive or deleted."}
    assert Vote.objects.count() == 1


def test_drf_endpoints_refuse_a_revoked_token_at_once(api_client, api_user):
    body = {"prompt": "What is 1+1?", "completion": "2"}
    assert api_client.post("/api/v1/generations/", body, format="json").status_code == 201
    Token.objects.filter(user=api_user).delete()
    assert api_client.post("/api/v1/generations/", body, format="json").status_code == 401


def test_a_remembered_staff_token_loses_staff_rights_at_once(staff_api_client, staff_user):
    assert staff_api_client.get("/api/v1/snapshots/").status_code == 200
    get_user_model().objects.filter(pk=staff_user.pk).update(is_staff=False, is_superuser=False)
    assert staff_api_client.get("/api/v1/snapshots/").status_code == 403
