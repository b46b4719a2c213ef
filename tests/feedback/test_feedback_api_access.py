"""API access: writes need a token, staff-only endpoints refuse others, the schema is served."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from feedback.models import Generation, Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/api/v1/generations/", "/api/v1/generations/batch/", "/api/v1/votes/",
                                 "/api/v1/imports/", "/api/v1/snapshots/"])
def test_anonymous_writes_are_refused(url):
    response = APIClient().post(url, {}, format="json")
    assert response.status_code == 401


def test_a_wrong_token_is_refused():
    generation = add_generation()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json")
    assert response.status_code == 401
    assert Vote.objects.count() == 0


def test_session_writes_need_csrf(annotator):
    generation = add_generation()
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(annotator)
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert Vote.objects.count() == 0


def test_snapshots_are_staff_only(api_client):
    assert api_client.get("/api/v1/snapshots/").status_code == 403
    assert api_client.post("/api/v1/snapshots/", {}, format="json").status_code == 403


def test_openapi_schema_lists_the_feedback_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/v1/generations/", "/api/v1/generations/batch/", "/api/v1/votes/", "/api/v1/imports/", "/api/v1/snapshots/"):
        assert "post" in paths[path], path
    assert not Generation.objects.exists()
