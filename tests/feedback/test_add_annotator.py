"""manage.py add_annotator: the account can log in and reach the annotation pages only."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_an_added_annotator_can_annotate_but_not_see_the_dashboard(client):
    out = StringIO()
    call_command("add_annotator", "carol", "--password", "s3cret-pass", stdout=out)
    assert json.loads(out.getvalue()) == {"username": "carol", "created": True, "staff": False}
    assert client.login(username="carol", password="s3cret-pass")
    assert client.get("/annotate/").status_code == 200
    assert client.get("/dashboard/").status_code == 403


def test_staff_flag_makes_an_admin(client):
    call_command("add_annotator", "dana", "--password", "s3cret-pass", "--staff", stdout=StringIO())
    assert client.login(username="dana", password="s3cret-pass")
    assert client.get("/dashboard/").status_code == 200
