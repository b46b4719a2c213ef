"""Promote, roll back and reject from the Models page: POST forms with CSRF, one active version."""
from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from training import services
from training.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions():
    base = ModelVersion.objects.create(name="base", base_model="/m", artifact_path="/m")
    services.promote(base, reason="first")
    candidate = ModelVersion.objects.create(
        name="run-7", base_model="/m", artifact_path="/runs/7/final", parent=base,
        metrics={"holdout": {"loss": 0.4123456, "reward_accuracy": 0.7}, "demo_accuracy": 0.61,
                 "gate": {"decision": "kept as candidate"}},
    )
    return base, candidate


@pytest.fixture
def staff_client(admin_user):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    return client


def csrf_token_from(client, url) -> str:
    html = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def test_page_shows_metrics_side_by_side(staff_client, versions):
    html = staff_client.get(reverse("training:versions")).content.decode()
    header = html[html.index("<thead>"):html.index("</thead>")]
    # Human labels, not metric keys; the gate's full record is under "details", not a column.
    columns = re.findall(r"<th[^>]*>([^<]+)</th>", header)
    assert columns == ["Version", "Status", "Accuracy", "Holdout loss", "Reward accuracy", "Gate verdict", "Actions"]
    assert "0.4123" in html and "61.0 %" in html
    assert 'id="active-version">base<' in html


def test_promote_then_roll_back(staff_client, versions):
    base, candidate = versions
    token = csrf_token_from(staff_client, reverse("training:versions"))
    response = staff_client.post(reverse("training:promote", args=[candidate.pk]), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    candidate.refresh_from_db()
    base.refresh_from_db()
    assert (candidate.status, base.status) == ("active", "retired")

    response = staff_client.post(reverse("training:rollback"), {"csrfmiddlewaretoken": token}, follow=True)
    candidate.refresh_from_db()
    base.refresh_from_db()
    assert (candidate.status, base.status) == ("retired", "active")
    assert "base is active again" in response.content.decode()


def test_reject_records_the_reason(staff_client, versions):
    _, candidate = versions
    token = csrf_token_from(staff_client, reverse("training:versions"))
    staff_client.post(reverse("training:reject", args=[candidate.pk]),
                      {"csrfmiddlewaretoken": token, "reason": "worse on math"})
    candidate.refresh_from_db()
    assert candidate.status == "rejected"
    assert candidate.status_reason == "worse on math"


def test_refused_action_is_shown_and_changes_nothing(staff_client, versions):
    base, _ = versions
    token = csrf_token_from(staff_client, reverse("training:versions"))
    response = staff_client.post(reverse("training:reject", args=[base.pk]),
                                 {"csrfmiddlewaretoken": token}, follow=True)
    assert "Could not reject base" in response.content.decode()
    base.refresh_from_db()
    assert base.status == "active"


def test_post_without_csrf_token_is_refused(staff_client, versions):
    _, candidate = versions
    response = staff_client.post(reverse("training:promote", args=[candidate.pk]))
    assert response.status_code == 403
    candidate.refresh_from_db()
    assert candidate.status == "candidate"
