"""Fixtures of the feedback tests: users in their roles, API clients, a little data."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.feedback.helpers import PASSWORD, make_annotator


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Snapshots and exports of each test go to its own directory."""
    settings.DATA_DIR = tmp_path / "var"
    return settings.DATA_DIR


@pytest.fixture(autouse=True)
def forget_remembered_tokens():
    from feedback.authentication import CachedTokenAuthentication

    CachedTokenAuthentication.forget_all()
    yield
    CachedTokenAuthentication.forget_all()


@pytest.fixture
def annotator(db):
    return make_annotator("alice")


@pytest.fixture
def second_annotator(db):
    return make_annotator("bob")


@pytest.fixture
def staff_user(db):
    return get_user_model().objects.create_user("admin", password=PASSWORD, is_staff=True, is_superuser=True)


@pytest.fixture
def api_user(db):
    """A product app's service account: API only, no role in the web pages."""
    return get_user_model().objects.create_user("product-app", password=PASSWORD)


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def api_client(api_user) -> APIClient:
    return token_client(api_user)


@pytest.fixture
def staff_api_client(staff_user) -> APIClient:
    return token_client(staff_user)
