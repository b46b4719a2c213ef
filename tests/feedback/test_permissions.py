"""Roles: annotators reach only the annotation pages; staff reach everything; others nothing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

STAFF_PAGES = ["/dashboard/", "/admin/", "/admin/feedback/vote/", "/runs/", "/models/"]


@pytest.mark.parametrize("url", ["/dashboard/"])
def test_an_annotator_gets_403_on_staff_pages(client, annotator, url):
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    assert (
        client.post("/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.3", "mode": "auto"}).status_code == 403
    )


def test_an_annotator_cannot_use_the_django_admin(client, annotator):
    client.force_login(annotator)
    for url in ("/admin/", "/admin/feedback/vote/", "/admin/login/", "/admin/feedback/vote/add/"):
        response = client.get(url)
        assert response.status_code == 403, url
    response = client.post("/admin/feedback/vote/add/", {"desirable": "on"})
    assert response.status_code == 403


def test_anonymous_visitors_get_the_admin_login_form(client):
    response = client.get("/admin/feedback/vote/")
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_anonymous_visitors_are_sent_to_log_in(client):
    for url in ("/annotate/", "/dashboard/", "/"):
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_an_api_only_account_cannot_annotate(client, api_user):
    client.force_login(api_user)
    assert client.get("/annotate/").status_code == 403
    assert client.post("/annotate/undo/").status_code == 403


def test_home_sends_each_role_to_its_page(client, annotator, staff_user):
    client.force_login(annotator)
    assert client.get("/").url == "/annotate/"
    client.force_login(staff_user)
    assert client.get("/").url == "/dashboard/"


def test_annotators_see_no_staff_links(client, annotator, staff_user):
    client.force_login(annotator)
    page = client.get("/annotate/").content.decode()
    assert 'href="/annotate/"' in page
    assert all(f'href="{url}"' not in page for url in STAFF_PAGES)
    client.force_login(staff_user)
    page = client.get("/annotate/").content.decode()
    assert all(f'href="{url}"' in page for url in ("/dashboard/", "/admin/", "/runs/", "/models/"))


def test_login_form_logs_an_annotator_in(client, annotator):
    from tests.feedback.helpers import PASSWORD

    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/annotate/").status_code == 200
