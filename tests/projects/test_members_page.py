"""The project admin's Members page: add an account with a role, change it, remove it; in this
project only."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from projects.models import Membership
from projects.selectors import default_project, role_in
from projects.services import create_project, set_membership
from tests.feedback.helpers import make_annotator

pytestmark = pytest.mark.django_db


@pytest.fixture
def project_admin(client):
    user = make_annotator("padma", role="admin")
    client.force_login(user)
    return user


def test_add_change_and_remove_a_member(client, project_admin):
    carol = get_user_model().objects.create_user("carol")
    response = client.post("/members/", {"username": "carol", "role": "annotator"}, follow=True)
    assert "carol is now annotator of demo" in response.content.decode()
    assert role_in(carol, default_project()) == "annotator"
    client.post("/members/", {"username": "carol", "role": "admin"})
    assert role_in(carol, default_project()) == "admin"
    assert 'id="member-carol"' in client.get("/members/").content.decode()
    client.post(f"/members/{carol.pk}/remove/")
    assert role_in(carol, default_project()) is None


def test_unknown_accounts_are_named_and_nothing_changes(client, project_admin):
    page = client.post("/members/", {"username": "nobody", "role": "admin"}).content.decode()
    assert "no active account named &#x27;nobody&#x27;" in page
    assert Membership.objects.count() == 1


def test_an_admin_cannot_remove_themselves(client, project_admin):
    response = client.post(f"/members/{project_admin.pk}/remove/", follow=True)
    assert "You cannot remove yourself" in response.content.decode()
    assert role_in(project_admin, default_project()) == "admin"


def test_another_projects_members_are_out_of_reach(client, project_admin):
    beta = create_project("beta")
    bob = get_user_model().objects.create_user("bob")
    set_membership(beta, bob, "admin")
    assert 'id="member-bob"' not in client.get("/members/").content.decode()
    assert client.post(f"/members/{bob.pk}/remove/").status_code == 404
    assert role_in(bob, beta) == "admin"
    # Adding bob here gives him a role here, and leaves his role in beta alone.
    client.post("/members/", {"username": "bob", "role": "annotator"})
    assert (role_in(bob, default_project()), role_in(bob, beta)) == ("annotator", "admin")
