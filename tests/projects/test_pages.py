"""Pages show their project, and only its data: the dashboard's counts, the runs and models lists."""

from __future__ import annotations

import re

import pytest

from feedback.models import Vote
from projects.services import create_project, set_membership
from tests.feedback.helpers import add_generation, add_labelled_examples, make_annotator
from training.models import ModelVersion

pytestmark = pytest.mark.django_db


def stat(page: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}">([^<]*)<', page).group(1)


def test_the_dashboard_names_its_project_and_counts_only_its_votes(client):
    beta = create_project("beta", base_model="/models/beta-base")
    add_labelled_examples(2, 1)  # the default project
    Vote.objects.create(
        generation=add_generation(prompt="beta's own", project=beta), external_user_id="x", desirable=True
    )
    admin = make_annotator("padma", role="admin")
    set_membership(beta, admin, "admin")
    client.force_login(admin)

    demo_page = client.get("/dashboard/?project=demo").content.decode()
    assert "· project demo" in demo_page and stat(demo_page, "n-votes") == "3"
    beta_page = client.get("/dashboard/?project=beta").content.decode()
    assert "· project beta" in beta_page and "/models/beta-base" in beta_page
    assert stat(beta_page, "n-votes") == "1" and stat(beta_page, "n-prompts") == "1"


def test_models_and_runs_pages_list_only_the_projects_versions(client):
    beta = create_project("beta")
    ModelVersion.objects.create(project=beta, name="beta-only", base_model="/m", artifact_path="/m")
    client.force_login(make_annotator("padma", role="admin"))
    assert "beta-only" not in client.get("/models/").content.decode()
    beta_version = ModelVersion.objects.get(name="beta-only")
    # Another project's version answers like a missing one, on every action.
    assert client.post(f"/models/{beta_version.pk}/promote/").status_code == 404
    assert client.post(f"/models/{beta_version.pk}/reject/", {"reason": "x"}).status_code == 404
    assert ModelVersion.objects.get(pk=beta_version.pk).status == ModelVersion.Status.CANDIDATE


def test_a_project_admin_of_beta_only_is_refused_in_demo(client):
    beta = create_project("beta")
    user = make_annotator("bea", project=beta, role="admin")
    client.force_login(user)
    assert client.get("/dashboard/?project=beta").status_code == 200
    assert client.get("/dashboard/?project=demo").status_code == 403
    assert client.get("/dashboard/?project=nope").status_code == 404


def test_annotators_see_only_their_projects_queue_and_vote_only_there(client):
    alpha = create_project("alpha")
    theirs = add_generation(prompt="demo's item", completion="x")
    mine = add_generation(prompt="alpha's item", completion="y", project=alpha)
    client.force_login(make_annotator("annie", project=alpha))
    page = client.get("/annotate/").content.decode()
    assert "alpha&#x27;s item" in page and "demo&#x27;s item" not in page
    assert client.get("/annotate/?project=demo").status_code == 403
    # Posting the other project's item id through this project's form saves nothing.
    response = client.post("/annotate/vote/", {"generation_id": theirs.pk, "label": "up"}, follow=True)
    assert "That item no longer exists" in response.content.decode()
    assert not Vote.objects.filter(generation=theirs).exists()
    client.post("/annotate/vote/", {"generation_id": mine.pk, "label": "down"})
    assert list(Vote.objects.values_list("generation_id", "desirable")) == [(mine.pk, False)]
