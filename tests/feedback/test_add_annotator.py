"""manage.py add_annotator: the account can log in and reach the annotation pages only."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_an_added_annotator_can_annotate_but_not_see_the_dashboard(client):
    out = StringIO()
    call_command("add_annotator", "carol", "--password", "s3cret-pass", stdout=out)
    assert json.loads(out.getvalue()) == {
        "username": "carol",
        "created": True,
        "staff": False,
        "project": "demo",
        "role": "annotator",
    }
    assert client.login(username="carol", password="s3cret-pass")
    assert client.get("/annotate/").status_code == 200
    assert client.get("/dashboard/").status_code == 403


def test_staff_flag_makes_a_project_admin_never_a_superuser(client):
    call_command("add_annotator", "dana", "--password", "s3cret-pass", "--staff", stdout=StringIO())
    assert client.login(username="dana", password="s3cret-pass")
    assert client.get("/dashboard/").status_code == 200
    dana = get_user_model().objects.get(username="dana")
    # Before projects, --staff set is_superuser: every permission of the installation.
    assert not dana.is_superuser


def test_a_staff_user_without_a_project_role_may_do_nothing(client):
    get_user_model().objects.create_user("erin", password="s3cret-pass", is_staff=True)
    assert client.login(username="erin", password="s3cret-pass")
    assert client.get("/dashboard/").status_code == 403
    assert (
        client.post("/dashboard/snapshot/", {"holdout": 0.1, "target_ratio": 1.333, "mode": "auto"}).status_code == 403
    )
    assert client.post("/models/rollback/").status_code == 403
