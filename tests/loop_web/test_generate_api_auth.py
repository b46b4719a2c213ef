"""API writes need a token (or a session): without one, /api/v1/generate answers 401."""
from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from feedback.models import Generation

pytestmark = pytest.mark.django_db


def test_generate_without_a_token_is_refused():
    response = APIClient().post(reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json")
    assert response.status_code in (401, 403)
    assert Generation.objects.count() == 0


def test_generate_with_a_wrong_token_is_refused():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.post(reverse("training:api-generate"), {"prompt": "What is 1+2?"}, format="json")
    assert response.status_code == 401
    assert Generation.objects.count() == 0


def test_feedback_api_writes_without_a_token_are_refused():
    # The product-app side of the loop: generations and votes also need a token.
    client = APIClient()
    for name in ("feedback-api:generations", "feedback-api:votes"):
        response = client.post(reverse(name), {}, format="json")
        assert response.status_code in (401, 403), name
