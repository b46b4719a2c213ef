"""POST /api/v1/imports/: staff upload a JSONL file; a bad file is a 400 naming line and field."""
from __future__ import annotations

import io
import json

import pytest

from feedback.models import Generation, ImportBatch, Vote

pytestmark = pytest.mark.django_db


def upload(client, lines: list, name="feedback.jsonl", **fields):
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/v1/imports/", {"file": handle, **fields}, format="multipart")


def test_staff_import_a_paired_file(staff_api_client):
    response = upload(staff_api_client, [{"prompt": "p", "chosen": "good", "rejected": "bad"}], format="paired")
    assert response.status_code == 201
    body = response.json()
    assert (body["format"], body["votes_created"], body["generations_created"]) == ("paired", 2, 2)
    assert ImportBatch.objects.get().filename == "feedback.jsonl"


def test_a_bad_line_is_a_400_naming_line_and_field(staff_api_client):
    response = upload(staff_api_client, [{"prompt": "p", "completion": "a", "label": True},
                                         {"prompt": "p", "completion": "b", "label": 1}])
    assert response.status_code == 400
    body = response.json()
    assert (body["line"], body["field"]) == (2, "label")
    assert "line 2: field 'label'" in body["detail"]
    assert (Generation.objects.count(), Vote.objects.count(), ImportBatch.objects.count()) == (0, 0, 0)


def test_scored_import_takes_the_threshold(staff_api_client):
    response = upload(staff_api_client, [{"prompt": "p", "completion": "a", "score": 0.9},
                                         {"prompt": "p", "completion": "b", "score": 0.1}], threshold=0.5)
    assert response.status_code == 201
    assert sorted(Vote.objects.values_list("generation__completion", "desirable")) == [("a", True), ("b", False)]


def test_non_staff_tokens_cannot_import(api_client):
    response = upload(api_client, [{"prompt": "p", "completion": "a", "label": True}])
    assert response.status_code == 403
    assert Vote.objects.count() == 0
