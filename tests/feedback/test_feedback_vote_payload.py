"""The vote endpoint's validation: a bad body is a 400 naming each offending field, nothing saved."""
from __future__ import annotations

import pytest

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db
URL = "/api/v1/votes/"

# (body, the fields its 400 names); "GEN" stands for an existing generation's id.
BAD_BODIES = [
    ({"desirable": True}, {"non_field_errors"}),
    ({"generation_id": "GEN", "generation_external_id": "ext", "desirable": True}, {"non_field_errors"}),
    ({"generation_id": "GEN"}, {"desirable"}),
    ({"generation_id": 0, "desirable": True}, {"generation_id"}),
    ({"generation_id": "one", "desirable": True}, {"generation_id"}),
    ({"generation_id": "GEN", "desirable": "maybe"}, {"desirable"}),
    ({"generation_id": "GEN", "desirable": True, "external_user_id": "x" * 201}, {"external_user_id"}),
    ({"generation_id": "GEN", "desirable": True, "comment": "c" * 5001}, {"comment"}),
    ({"generation_id": ["GEN"], "desirable": None}, {"generation_id", "desirable"}),
]


@pytest.mark.parametrize("body, fields", BAD_BODIES)
def test_a_bad_body_names_its_fields(api_client, body, fields):
    generation = add_generation()
    body = {key: (generation.pk if value == "GEN" else [generation.pk] if value == ["GEN"] else value)
            for key, value in body.items()}
    response = api_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert set(response.json()) == fields
    assert not Vote.objects.exists()


def test_a_non_object_body_is_rejected(api_client):
    response = api_client.post(URL, [1, 2], format="json")
    assert response.status_code == 400 and set(response.json()) == {"non_field_errors"}
