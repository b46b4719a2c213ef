"""In Chromium: an annotator is refused (403) on the staff pages and shown no staff links."""
from __future__ import annotations

import pytest

from feedback_helpers import PASSWORD, make_annotator

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_an_annotator_gets_403_on_admin_pages(live_server, page):
    make_annotator("alice")
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "alice")
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(f"{live_server.url}/annotate/")
    assert page.locator("nav a").all_text_contents() == ["Annotate"]

    for path in ("/dashboard/", "/runs/", "/models/", "/admin/", "/admin/feedback/vote/"):
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 403, path
        assert "403" in page.text_content("h1")
