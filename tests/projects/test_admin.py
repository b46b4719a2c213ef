"""The Django admin: projects, memberships and API clients are there; a key added there is shown once
(as the library's message) and stored hashed; bad scopes and rates are refused on their fields."""

from __future__ import annotations

import re

import pytest
from django.contrib import admin
from rest_framework_api_key.models import APIKey

from projects.models import ApiClient, Membership, Project
from projects.selectors import default_project

pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("root", is_staff=True, is_superuser=True))
    return client


def test_projects_memberships_and_api_clients_are_registered_and_the_unused_key_model_is_not():
    for model in (Project, Membership, ApiClient):
        assert admin.site.is_registered(model), model
    assert not admin.site.is_registered(APIKey)


def add_key(client, **fields):
    data = {
        "project": default_project().pk,
        "name": "partner app",
        "scopes": '["votes:write"]',
        "rate": "",
        "expiry_date_0": "",
        "expiry_date_1": "",
        **fields,
    }
    return client.post("/admin/projects/apiclient/add/", data, follow=True)


def test_a_key_added_in_the_admin_is_shown_once_and_stored_hashed(superuser_client):
    page = add_key(superuser_client).content.decode()
    client = ApiClient.objects.get()
    key = re.search(rf"({client.prefix}\.[A-Za-z0-9]+)", page).group(1)
    assert "you will not be able to see it again" in page
    assert ApiClient.objects.is_valid(key) and key not in client.hashed_key
    assert client.scopes == ["votes:write"] and client.created_by.username == "root"
    listing = superuser_client.get("/admin/projects/apiclient/").content.decode()
    assert key.partition(".")[2] not in listing and client.prefix in listing


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"scopes": '["votes:write", "everything"]'}, "unknown scope(s) everything"),
        ({"scopes": "[]"}, "This field is required."),
        ({"rate": "fast"}, "is not a rate like"),
    ],
)
def test_bad_scopes_or_rates_are_refused(superuser_client, fields, message):
    page = add_key(superuser_client, **fields).content.decode()
    assert message in page and not ApiClient.objects.exists()


def test_the_revoke_action(superuser_client):
    from projects.services import create_api_key

    client, _ = create_api_key(default_project(), scopes="read")
    superuser_client.post("/admin/projects/apiclient/", {"action": "revoke_selected", "_selected_action": [client.pk]})
    assert ApiClient.objects.get(pk=client.pk).revoked
