"""Every staff page of the loop refuses annotators (403) and sends anonymous visitors to log in."""
from __future__ import annotations

import pytest
from django.urls import reverse

from feedback.models import DatasetSnapshot
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def some_run_and_version():
    snapshot = DatasetSnapshot.objects.create(path="/nonexistent/snapshot.jsonl", sha256="0" * 64)
    version = ModelVersion.objects.create(name="v-test", base_model="/m", artifact_path="/m")
    run = TrainingRun.objects.create(snapshot=snapshot, base_version=version)
    return run, version


def staff_urls(run, version):
    return [
        ("get", reverse("training:runs")),
        ("get", reverse("training:run_detail", args=[run.pk])),
        ("get", reverse("training:run_progress", args=[run.pk])),
        ("get", reverse("training:versions")),
        ("get", reverse("training:retrain")),
        ("post", reverse("training:retrain")),
        ("post", reverse("training:cancel", args=[run.pk])),
        ("post", reverse("training:promote", args=[version.pk])),
        ("post", reverse("training:rollback")),
        ("post", reverse("training:reject", args=[version.pk])),
    ]


def test_annotator_gets_403_on_every_staff_page(client, annotator_user, some_run_and_version):
    client.force_login(annotator_user)
    for method, url in staff_urls(*some_run_and_version):
        response = getattr(client, method)(url)
        assert response.status_code == 403, (method, url, response.status_code)
    # Nothing changed behind the refusals.
    run, version = some_run_and_version
    run.refresh_from_db()
    version.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED
    assert version.status == ModelVersion.Status.CANDIDATE
    assert TrainingRun.objects.count() == 1


def test_anonymous_visitor_is_sent_to_login(client, some_run_and_version):
    login = reverse("login")
    for method, url in staff_urls(*some_run_and_version):
        response = getattr(client, method)(url)
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith(login), (method, url, response["Location"])


def test_staff_sees_the_pages(client, admin_user, some_run_and_version):
    client.force_login(admin_user)
    for method, url in staff_urls(*some_run_and_version):
        if method == "get":
            assert client.get(url).status_code == 200, url
