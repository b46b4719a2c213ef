"""Dashboard charts and words, the retrain form, the API docs page and schema, the admin's labels, the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from django.urls import resolve
from ui_helpers import PHONE, add_votes, build_world, log_in, make_user

from feedback.models import DatasetSnapshot, Job
from feedback.services import jobs
from projects.selectors import default_project
from training.models import ModelVersion, TrainingRun

README = Path(settings.BASE_DIR) / "README.md"


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_dashboard_chart_has_axes_and_the_balance_is_explained_on_a_phone(live_server, open_page, loop_redis):
    world = build_world()
    page, errors = open_page(PHONE)
    log_in(page, live_server.url, "boss", "/dashboard/")
    page.wait_for_function("window.votesChart")
    assert page.evaluate("votesChart.options.scales.x.title.text") == "day"
    assert page.evaluate("votesChart.options.scales.y.title.text") == "votes"
    assert page.evaluate("votesChart.data.datasets[0].data.reduce((a, b) => a + b, 0)") == 8
    assert page.evaluate("votesChart.options.plugins.tooltip.enabled") is True
    text = page.inner_text("#balance")
    assert "3.00 desirable votes for every undesirable one" in text and "λ_D" in text and "λ_U" in text
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # Main action: cut a snapshot (Enter in a field submits the form too).
    page.fill("#id_holdout", "0")
    with page.expect_navigation():
        page.press("#id_holdout", "Enter")
    # A job cuts it; its page follows it and shows the result once the worker is done.
    job = Job.objects.filter(kind=Job.Kind.SNAPSHOT).latest("pk")
    assert f"Snapshot job {job.pk} queued." in page.inner_text("#messages")
    jobs.run_job(job.pk)  # the worker's part
    page.wait_for_selector("#job-result")
    assert "n_desirable\t6" in page.inner_text("#job-result") and "n_undesirable\t2" in page.inner_text("#job-result")
    assert DatasetSnapshot.objects.latest("pk").pk == world["snapshot"].pk + 1
    assert not errors


@pytest.mark.django_db
def test_starting_a_run_leaves_no_stale_flash_and_the_defaults_read_as_a_table(client):
    make_user("boss", staff=True)
    add_votes(3, 3)
    ModelVersion.objects.create(
        project=default_project(), name="base", base_model="/m", artifact_path="/m", status=ModelVersion.Status.ACTIVE
    )
    client.login(username="boss", password="correct horse battery staple")
    form = client.get("/runs/new/").content.decode()
    assert "{'" not in form and "'beta'" not in form  # no raw Python dict
    assert re.search(r"<th>β</th><td>0.1</td>", form) and re.search(r"<th>Learning rate</th><td>5e-06</td>", form)
    response = client.post("/runs/new/", {"max_steps": "3"}, follow=True)
    # A new snapshot is cut by a worker: the flash says so on the job page, which it then leaves.
    job = Job.objects.get()
    assert response.redirect_chain[-1][0] == f"/dashboard/jobs/{job.pk}/"
    assert f"Snapshot job {job.pk} queued" in response.content.decode()
    jobs.run_job(job.pk)
    run = TrainingRun.objects.get()
    page = client.get(f"/runs/{run.pk}/").content.decode()
    assert "queued." not in page and 'id="messages"' not in page
    assert "Waiting for a worker" in page


@pytest.mark.browser
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_api_docs_page_is_served_from_the_installation(live_server, open_page):
    page, errors = open_page(PHONE)
    outside = []
    page.route(
        "**/*",
        lambda route: (
            (outside.append(route.request.url), route.abort())
            if not route.request.url.startswith(live_server.url)
            else route.continue_()
        ),
    )
    page.goto(f"{live_server.url}/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock-tag", timeout=20_000)
    assert "/api/v1/votes/" in page.inner_text("#swagger-ui")
    assert outside == [] and not errors


@pytest.mark.django_db
def test_schema_examples_of_responses_are_responses():
    schema = Client().get("/api/schema/?format=json").json()
    vote = schema["paths"]["/api/v1/votes/"]["post"]
    request_examples = vote["requestBody"]["content"]["application/json"]["examples"]
    response_examples = vote["responses"]["201"]["content"]["application/json"]["examples"]
    assert all("external_user_id" in example["value"] for example in request_examples.values())
    assert all({"id", "created"} <= set(example["value"]) for example in response_examples.values())
    generate = schema["paths"]["/api/v1/generate/"]["post"]
    assert all(
        "completion" in e["value"]
        for e in generate["responses"]["200"]["content"]["application/json"]["examples"].values()
    )


@pytest.mark.django_db
def test_generate_has_a_trailing_slash_and_the_old_path_still_works():
    from training.api import GenerateView

    assert resolve("/api/v1/generate/").func.view_class is GenerateView
    assert issubclass(resolve("/api/v1/generate").func.view_class, GenerateView)
    paths = Client().get("/api/schema/?format=json").json()["paths"]
    assert "/api/v1/generate/" in paths and "/api/v1/generate" not in paths  # documented once
    assert all(path.endswith("/") for path in paths if path.startswith("/api/v1/"))


@pytest.mark.django_db
def test_admin_says_import_batches(client):
    make_user("boss", staff=True)
    client.login(username="boss", password="correct horse battery staple")
    page = client.get("/admin/").content.decode()
    assert "Import batches" in page and "Import batchs" not in page


def test_readme_links_resolve_and_it_says_how_to_get_an_api_key():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text):
        if not re.match(r"https?://", target):
            assert (README.parent / target).exists(), f"README links to a missing file: {target}"
    assert "## Get an API key" in text
    for image in ("annotate", "models-compare", "run-live"):
        for size in ("desktop", "phone"):
            assert f"docs/screenshots/{image}-{size}.png" in text
