"""Over autocommit (a real web request) the vote's INSERT itself checks the token: a revoked
token writes nothing and gets 401, even for a missing generation or a repeated vote."""
from __future__ import annotations

import pytest
from django.db import transaction
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
URL = "/api/v1/votes/"


def test_the_token_is_checked_by_the_insert(api_client, api_user):
    assert transaction.get_autocommit()
    generation = add_generation()
    body = {"generation_id": generation.pk, "desirable": True}
    first = api_client.post(URL, body, format="json")
    again = api_client.post(URL, {**body, "desirable": False}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "created": False}
    Token.objects.filter(user=api_user).delete()
    assert api_client.post(URL, body, format="json").status_code == 401
    assert api_client.post(URL, {**body, "external_user_id": "u"}, format="json").status_code == 401
    assert list(Vote.objects.values_list("annotator_id", "desirable")) == [(api_user.pk, True)]


def test_a_wrong_token_learns_nothing_about_generations():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    response = client.post(URL, {"generation_id": 999_999, "desirable": True}, format="json")
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid token."})
    assert not Vote.objects.exists()
