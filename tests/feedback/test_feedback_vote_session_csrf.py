"""The vote endpoint is csrf_exempt for token callers only: a browser session still needs CSRF."""
from __future__ import annotations

import pytest
from django.middleware.csrf import get_token
from django.test import RequestFactory
from rest_framework.test import APIClient

from feedback.models import Vote
from feedback_helpers import add_generation

pytestmark = pytest.mark.django_db


def session_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def test_a_session_vote_without_csrf_token_is_refused(annotator):
    generation = add_generation()
    response = session_client(annotator).post(
        "/api/v1/votes/", {"generation_id": generation.pk, "desirable": True, "external_user_id": "u"}, format="json")
    assert response.status_code == 403 and response.json()["detail"].startswith("CSRF Failed")
    assert not Vote.objects.exists()


def test_a_session_vote_with_a_wrong_csrf_token_is_refused(annotator):
    generation = add_generation()
    client = session_client(annotator)
    client.cookies["csrftoken"] = get_token(RequestFactory().get("/"))
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json",
                           HTTP_X_CSRFTOKEN="x" * 32)
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not Vote.objects.exists()


def test_a_session_vote_with_csrf_is_recorded_for_that_user(annotator):
    generation = add_generation()
    client = session_client(annotator)
    csrf = get_token(RequestFactory().get("/"))
    client.cookies["csrftoken"] = csrf
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": False}, format="json",
                           HTTP_X_CSRFTOKEN=csrf)
    assert response.status_code == 201, response.content
    assert list(Vote.objects.values_list("annotator_id", "desirable")) == [(annotator.pk, False)]


def test_an_inactive_session_user_is_not_authenticated(annotator):
    generation = add_generation()
    client = session_client(annotator)
    annotator.is_active = False
    annotator.save(update_fields=["is_active"])
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json")
    assert response.status_code == 401
    assert not Vote.objects.exists()
