"""The API's brief memory of verified tokens: bounded in time, never for invalid tokens."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from feedback.authentication import CachedTokenAuthentication
from tests.feedback.helpers import add_generation

pytestmark = pytest.mark.django_db


def vote(client, generation, voter):
    return client.post(
        "/api/v1/votes/", {"generation_id": generation.pk, "desirable": True, "external_user_id": voter}, format="json"
    )


def test_with_the_memory_off_a_revoked_token_is_refused_at_once(settings, api_client, api_user):
    settings.API_TOKEN_CACHE_SECONDS = 0
    generation = add_generation()
    assert vote(api_client, generation, "u1").status_code == 201
    Token.objects.filter(user=api_user).delete()
    assert vote(api_client, generation, "u2").status_code == 401


def test_invalid_tokens_are_never_remembered(settings):
    settings.API_TOKEN_CACHE_SECONDS = 3600
    generation = add_generation()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert vote(client, generation, "u").status_code == 401
    assert vote(client, generation, "u").status_code == 401
    assert not CachedTokenAuthentication._remembered
