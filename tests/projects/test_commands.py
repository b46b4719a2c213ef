"""create_project and create_api_key: one JSON line each; the key is printed once and stored hashed;
bad input is a clear error that changes nothing."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from projects.models import ApiClient, Project
from tests.feedback.helpers import add_generation

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_create_a_project_then_a_key_that_works_only_there():
    project = run("create_project", "Shop Assistant")
    assert project == {
        "project": "Shop Assistant",
        "slug": "shop-assistant",
        "id": Project.objects.get(name="Shop Assistant").pk,
    }
    made = run(
        "create_api_key",
        "--project",
        "shop-assistant",
        "--scopes",
        "votes:write,generations:write",
        "--expires-days",
        "30",
    )
    assert made["project"] == "Shop Assistant" and made["scopes"] == ["generations:write", "votes:write"]
    client = ApiClient.objects.get(prefix=made["prefix"])
    assert made["key"] not in client.hashed_key and made["key"].partition(".")[2] not in client.id
    assert made["expires"] is not None and client.expiry_date is not None

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {made['key']}")
    mine = api.post("/api/v1/generations/", {"prompt": "p", "completion": "c"}, format="json")
    assert mine.status_code == 201
    elsewhere = add_generation(prompt="in the demo project")
    refused = api.post("/api/v1/votes/", {"generation_id": elsewhere.pk, "desirable": True}, format="json")
    assert refused.status_code == 404


@pytest.mark.parametrize(
    "args, message",
    [
        (["--project", "nope", "--scopes", "read"], "no project named 'nope'"),
        (["--project", "demo", "--scopes", "read,admin"], "unknown scope(s) admin"),
        (["--project", "demo", "--scopes", ""], "give at least one scope"),
        (["--project", "demo", "--scopes", "read", "--expires-days", "0"], "expires_days: must be at least 1"),
        (["--project", "demo", "--scopes", "read", "--rate", "lots"], "is not a rate like"),
    ],
)
def test_create_api_key_refuses_bad_input_and_creates_nothing(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("create_api_key", *args, stdout=StringIO())
    assert not ApiClient.objects.exists()


def test_a_project_name_is_unique():
    run("create_project", "alpha")
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_project", "alpha", stdout=StringIO())
    assert Project.objects.filter(name="alpha").count() == 1
