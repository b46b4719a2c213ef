"""Per-key rate limits (DRF throttles): over its rate a key gets 429 with Retry-After; other keys
and the installation default are independent; a key without a rate and no default is unlimited."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from feedback.models import Vote
from projects.selectors import default_project
from projects.services import create_api_key
from tests.feedback.helpers import add_generation

pytestmark = pytest.mark.django_db


def key(rate: str = "") -> APIClient:
    client = APIClient()
    _, secret = create_api_key(default_project(), scopes="votes:write,generations:write", rate=rate)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


def vote(client, generation, user: str):
    return client.post(
        "/api/v1/votes/", {"generation_id": generation.pk, "desirable": True, "external_user_id": user}, format="json"
    )


def test_over_its_rate_a_key_gets_429_with_retry_after():
    generation = add_generation()
    limited = key("3/min")
    answers = [vote(limited, generation, f"u{n}") for n in range(5)]
    assert [response.status_code for response in answers] == [201, 201, 201, 429, 429]
    refused = answers[3]
    assert 0 < int(refused["Retry-After"]) <= 60
    assert refused.json()["detail"].startswith("Request was throttled.")
    assert Vote.objects.count() == 3  # a refused vote writes nothing


def test_one_keys_limit_does_not_touch_another_key():
    generation = add_generation()
    limited, other = key("1/min"), key("1/min")
    assert vote(limited, generation, "a").status_code == 201
    assert vote(limited, generation, "b").status_code == 429
    assert vote(other, generation, "c").status_code == 201


def test_the_installation_default_applies_to_keys_without_a_rate(settings):
    settings.PROSPECT_API_DEFAULT_RATE = "2/hour"
    generation = add_generation()
    default, own = key(), key("5/hour")
    assert [vote(default, generation, f"d{n}").status_code for n in range(3)] == [201, 201, 429]
    assert [vote(own, generation, f"o{n}").status_code for n in range(3)] == [201, 201, 201]


def test_without_any_rate_a_key_is_not_limited(settings):
    settings.PROSPECT_API_DEFAULT_RATE = ""
    generation = add_generation()
    unlimited = key()
    assert {vote(unlimited, generation, f"u{n}").status_code for n in range(30)} == {201}


def test_a_bad_rate_is_refused_naming_the_field():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as refused:
        create_api_key(default_project(), scopes="read", rate="fast")
    assert "rate" in refused.value.message_dict
