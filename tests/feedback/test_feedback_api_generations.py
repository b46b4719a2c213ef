"""POST /api/v1/generations/ and /generations/batch/: idempotent, all-or-nothing batches."""
from __future__ import annotations

import pytest

from feedback.models import Generation, Prompt

pytestmark = pytest.mark.django_db


def test_create_a_generation_then_the_same_again(api_client):
    body = {"prompt": [{"role": "user", "content": "What is 3+4?"}], "completion": "7", "external_id": "app-1"}
    first = api_client.post("/api/v1/generations/", body, format="json")
    again = api_client.post("/api/v1/generations/", body, format="json")
    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["id"] == first.json()["id"]
    generation = Generation.objects.get()
    assert generation.external_id == "app-1" and generation.source == "api"
    assert generation.prompt.content == [{"role": "user", "content": "What is 3+4?"}]


def test_an_external_id_cannot_name_two_generations(api_client):
    api_client.post("/api/v1/generations/", {"prompt": "p", "completion": "a", "external_id": "x"}, format="json")
    response = api_client.post("/api/v1/generations/", {"prompt": "p", "completion": "b", "external_id": "x"}, format="json")
    assert response.status_code == 409
    assert "external_id" in response.json()
    assert Generation.objects.count() == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "p", "completion": "  "}, "completion"),
        ({"prompt": "", "completion": "a"}, "prompt"),
        ({"prompt": [{"role": "user"}], "completion": "a"}, "prompt"),
        ({"completion": "a"}, "prompt"),
        ({"prompt": "p", "completion": "a", "model_version": 999}, "model_version"),
    ],
)
def test_bad_fields_are_named(api_client, body, field):
    response = api_client.post("/api/v1/generations/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Generation.objects.count() == 0


def test_a_batch_is_saved_whole(api_client):
    items = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 201
    assert [row["created"] for row in response.json()["generations"]] == [True] * 5
    assert Generation.objects.count() == 5


def test_a_batch_with_one_bad_item_saves_nothing_and_names_the_item(api_client):
    items = [{"prompt": "q0", "completion": "a"}, {"prompt": "q1", "completion": ""}, {"prompt": "q2", "completion": "c"}]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 400
    errors = response.json()["generations"]
    assert list(errors) == ["1"] and "completion" in errors["1"]
    assert (Generation.objects.count(), Prompt.objects.count()) == (0, 0)


def test_a_batch_with_a_conflict_saves_nothing(api_client):
    api_client.post("/api/v1/generations/", {"prompt": "p", "completion": "a", "external_id": "x"}, format="json")
    items = [{"prompt": "new", "completion": "n"}, {"prompt": "p", "completion": "other", "external_id": "x"}]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 409
    assert Generation.objects.count() == 1
    assert not Prompt.objects.filter(content="new").exists()
