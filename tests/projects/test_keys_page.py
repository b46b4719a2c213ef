"""The project admin's API keys page and the header's project switcher."""

from __future__ import annotations

import re

import pytest
from rest_framework.test import APIClient

from projects.models import ApiClient
from projects.selectors import default_project
from projects.services import create_api_key, create_project, set_membership
from tests.feedback.helpers import add_generation, make_annotator

pytestmark = pytest.mark.django_db


@pytest.fixture
def project_admin(client):
    user = make_annotator("padma", role="admin")
    client.force_login(user)
    return user


def create_key(client, **fields):
    data = {"name": "mobile app", "scopes": ["votes:write", "generations:write"], **fields}
    return client.post("/keys/", data)


def test_a_created_key_is_shown_once_and_works(client, project_admin):
    response = create_key(client, expires_days="30")
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = response.content.decode()
    key = re.search(r'<pre id="new-key-value" class="config">([^<]+)</pre>', page).group(1)
    stored = ApiClient.objects.get()
    assert key.startswith(stored.prefix + ".") and stored.created_by == project_admin
    assert (stored.project, stored.scopes, stored.name) == (
        default_project(),
        ["generations:write", "votes:write"],
        "mobile app",
    )
    assert stored.expiry_date is not None

    listing = client.get("/keys/").content.decode()
    assert key.partition(".")[2] not in listing  # shown once: never again
    row = re.search(rf'<tr id="key-{stored.prefix}".*?</tr>', listing, re.S).group(0)
    assert "generations:write, votes:write" in row and "mobile app" in row and "never" in row  # never used

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    generation = add_generation()
    assert (
        api.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json").status_code
        == 201
    )
    row = re.search(rf'<tr id="key-{stored.prefix}".*?</tr>', client.get("/keys/").content.decode(), re.S).group(0)
    assert "never</td>" not in row.split("<td", 6)[6]  # the last-used column has a date now


def test_revoking_a_key_refuses_it_at_once(client, project_admin):
    stored, key = create_api_key(default_project(), scopes="votes:write")
    response = client.post(f"/keys/{stored.prefix}/revoke/", follow=True)
    assert "is revoked" in response.content.decode()
    assert ApiClient.objects.get(pk=stored.pk).revoked
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert (
        api.post("/api/v1/votes/", {"generation_id": add_generation().pk, "desirable": True}, format="json").status_code
        == 401
    )


def test_bad_input_names_the_field_and_creates_nothing(client, project_admin):
    page = create_key(client, scopes=[], rate="lots").content.decode()
    assert "This field is required." in page and "is not a rate like" in page
    assert not ApiClient.objects.exists()


def test_another_projects_key_cannot_be_seen_or_revoked(client, project_admin):
    theirs, _ = create_api_key(create_project("beta"), scopes="read", name="their app")
    assert "their app" not in client.get("/keys/").content.decode()
    assert client.post(f"/keys/{theirs.prefix}/revoke/").status_code == 404
    assert not ApiClient.objects.get(pk=theirs.pk).revoked


def test_the_switcher_lists_the_users_projects_and_switches(client, project_admin):
    beta = create_project("beta")
    create_api_key(beta, scopes="read", name="beta app")
    set_membership(beta, project_admin, "admin")
    page = client.get("/keys/").content.decode()
    switcher = re.search(r'<form class="project-switcher".*?</form>', page, re.S).group(0)
    assert (
        '<option value="demo" selected>demo</option>' in switcher and '<option value="beta" >beta</option>' in switcher
    )
    assert client.get("/?project=beta").url == "/dashboard/"
    page = client.get("/keys/").content.decode()  # the choice is remembered
    assert "beta app" in page and '<option value="beta" selected>beta</option>' in page


def test_a_user_of_one_project_sees_its_name_not_a_switcher(client, project_admin):
    page = client.get("/keys/").content.decode()
    assert 'id="project-switcher"' not in page and '<span class="project-name" id="project-name">demo</span>' in page


def test_annotators_see_no_keys_link_and_are_refused(client):
    client.force_login(make_annotator("annie"))
    assert 'href="/keys/"' not in client.get("/annotate/").content.decode()
    assert client.get("/keys/").status_code == 403
