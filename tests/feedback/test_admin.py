"""Every feedback model is in the Django admin; snapshots are read-only and show their weights."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.utils.html import escape

from feedback.models import DatasetSnapshot, Generation, ImportBatch, Job, Prompt, Vote
from feedback.services import jobs
from tests.feedback.helpers import add_generation, add_labelled_examples

pytestmark = pytest.mark.django_db


def test_every_model_is_registered():
    for model in (Prompt, Generation, Vote, ImportBatch, DatasetSnapshot):
        assert admin.site.is_registered(model), model


def test_changelists_and_change_pages_render_for_staff(client, staff_user):
    add_labelled_examples(2, 1)
    generation = add_generation(prompt=[{"role": "user", "content": "x"}], completion="y")
    client.force_login(staff_user)
    for url in (
        "/admin/feedback/prompt/",
        "/admin/feedback/generation/",
        "/admin/feedback/vote/",
        "/admin/feedback/importbatch/",
        "/admin/feedback/datasetsnapshot/",
        f"/admin/feedback/generation/{generation.pk}/change/",
    ):
        assert client.get(url).status_code == 200, url


def test_the_admin_button_queues_a_snapshot_job_shown_with_its_rule(client, staff_user, settings):
    settings.SNAPSHOT_HOLDOUT = 0.0  # every example in train, so λ_D is exactly 4/3 · 10
    add_labelled_examples(1, 10)
    client.force_login(staff_user)
    page = client.get("/admin/feedback/datasetsnapshot/").content.decode()
    assert 'id="admin-create-snapshot"' in page
    response = client.post("/admin/feedback/datasetsnapshot/create/")
    # Not cut inside the request: a job for a worker, and its page.
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/dashboard/jobs/{job.pk}/"
    assert (job.kind, job.status, DatasetSnapshot.objects.count()) == ("snapshot", "queued", 0)
    jobs.run_job(job.pk)  # what the worker does
    snapshot = DatasetSnapshot.objects.get()
    page = client.get(response["Location"]).content.decode()
    assert "13.33" in page
    detail = client.get(f"/admin/feedback/datasetsnapshot/{snapshot.pk}/change/").content.decode()
    assert escape(snapshot.weight_rule) in detail


def test_an_admin_action_double_rates_a_slice(client, staff_user):
    items = [add_generation(completion=str(i)) for i in range(3)]
    client.force_login(staff_user)
    client.post(
        "/admin/feedback/generation/", {"action": "double_rate", "_selected_action": [items[0].pk, items[1].pk]}
    )
    assert sorted(Generation.objects.values_list("votes_wanted", flat=True), key=str) == [2, 2, None]
