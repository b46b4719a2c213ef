"""Fixtures of the feedback tests: users in their roles, API clients, a little data."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from tests.feedback.helpers import ALL_SCOPES, PASSWORD, key_client, make_annotator


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Snapshots and exports of each test go to its own directory."""
    settings.DATA_DIR = tmp_path / "var"
    return settings.DATA_DIR


@pytest.fixture(autouse=True)
def forget_last_used():
    from projects.authentication import forget_last_used, forget_verified_keys

    forget_last_used(), forget_verified_keys()
    yield
    forget_last_used(), forget_verified_keys()


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
def api_client(db) -> APIClient:
    """A product app's key in the default project: generations, votes, generate, read."""
    return key_client()


@pytest.fixture
def staff_api_client(db) -> APIClient:
    """A project admin's key: every scope (imports, snapshots, steering fields too)."""
    return key_client(scopes=ALL_SCOPES)


@pytest.fixture
def api_user(db):
    """An account with no role in any project (what product apps used before API keys)."""
    return get_user_model().objects.create_user("product-app", password=PASSWORD)
