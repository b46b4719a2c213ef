"""The attacks of issue 9, replayed over HTTP against a live server, the way they were found: two
product apps (projects alpha and beta) on one installation, an annotator, a staff user without a
role. Each test failed on the code before projects (one global pool, tokens acting for everyone)
and passes now.
"""

from __future__ import annotations

import io
import json
from io import StringIO

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from feedback.models import DatasetSnapshot, Generation, ImportBatch, Vote
from feedback.services import create_snapshot
from projects.models import ApiClient
from projects.selectors import get_project
from projects.services import create_api_key, create_project, set_membership
from tests.feedback.helpers import PASSWORD
from training import registry
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

PRODUCT_SCOPES = "generations:write,votes:write,generate,read"


def key_session(live_server, project, scopes=PRODUCT_SCOPES) -> httpx.Client:
    _, key = create_api_key(project, scopes=scopes)
    return httpx.Client(base_url=live_server.url, headers={"Authorization": f"Api-Key {key}"}, timeout=60)


def browser_session(live_server, username: str) -> httpx.Client:
    """Signed in through the login form, as a browser is; CSRF header set for later POSTs."""
    client = httpx.Client(base_url=live_server.url, timeout=60)
    client.get("/accounts/login/")
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": client.cookies["csrftoken"]},
    )
    assert response.status_code == 302, response.text[:500]
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]  # rotated at login
    return client


def make_user(username: str, project=None, role: str | None = None, **flags):
    user = get_user_model().objects.create_user(username, password=PASSWORD, **flags)
    if role is not None:
        set_membership(project, user, role)
    return user


@pytest.fixture
def alpha():
    return create_project("alpha")


@pytest.fixture
def beta():
    return create_project("beta")


@pytest.fixture
def app_a(live_server, alpha):
    return key_session(live_server, alpha)


@pytest.fixture
def app_b(live_server, beta):
    return key_session(live_server, beta)


def create_item(app, **fields) -> dict:
    body = {"prompt": "Where is my parcel, order 5521?", "completion": "It left Lyon this morning.", **fields}
    response = app.post("/api/v1/generations/", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def vote(app, **body) -> httpx.Response:
    return app.post("/api/v1/votes/", json=body)


# --- forged end-user votes ----------------------------------------


def test_another_projects_key_cannot_cast_votes_on_an_item(app_a, app_b):
    item = create_item(app_a, external_id="a-msg-1")
    assert vote(app_a, generation_id=item["id"], desirable=False, external_user_id="user-9").status_code == 201
    # Before: 50 × 201, and snapshots, training and auto-promotion followed the forged majority.
    forged = [
        vote(app_b, generation_id=item["id"], desirable=True, external_user_id=f"invented-{n}") for n in range(50)
    ]
    assert {response.status_code for response in forged} == {404}
    assert list(Vote.objects.filter(generation_id=item["id"]).values_list("external_user_id", "desirable")) == [
        ("user-9", False)
    ]


def test_another_projects_item_answers_exactly_like_a_missing_one(app_a, app_b):
    item = create_item(app_a, external_id="a-msg-1")
    theirs = vote(app_b, generation_id=item["id"], desirable=True)
    missing = vote(app_b, generation_id=item["id"] + 10_000, desirable=True)
    assert (theirs.status_code, missing.status_code) == (404, 404)
    assert theirs.json() == {"generation_id": [f"generation {item['id']} does not exist"]}
    assert missing.json() == {"generation_id": [f"generation {item['id'] + 10_000} does not exist"]}
    assert not Vote.objects.exists()


def test_another_projects_generation_external_id_is_unknown(app_a, app_b):
    create_item(app_a, external_id="a-msg-1")
    # Before: 201, a vote on A's item through A's own id for it.
    response = vote(app_b, generation_external_id="a-msg-1", desirable=True, external_user_id="x")
    assert response.status_code == 404
    assert response.json() == {"generation_external_id": ["no generation has external_id 'a-msg-1'"]}
    assert not Vote.objects.exists()


def test_no_key_reads_or_overwrites_another_keys_end_user(live_server, alpha, app_a, app_b):
    item = create_item(app_a)
    assert vote(app_a, generation_id=item["id"], desirable=False, external_user_id="user-9").status_code == 201
    # Before: B voting as user-9 got 200 {"desirable": false, "created": false}: A's end user's label.
    from_b = vote(app_b, generation_id=item["id"], desirable=True, external_user_id="user-9")
    assert from_b.status_code == 404 and "desirable" not in from_b.json()
    # Even a second key of the same project: its user-9 is another person, with a vote of their own.
    same_project = key_session(live_server, alpha)
    other = vote(same_project, generation_id=item["id"], desirable=True, external_user_id="user-9")
    assert other.status_code == 201 and other.json()["desirable"] is True and other.json()["created"] is True
    # A repeat answers only for its own caller.
    again = vote(app_a, generation_id=item["id"], desirable=True, external_user_id="user-9")
    assert again.status_code == 200 and again.json()["desirable"] is False and again.json()["created"] is False
    votes = Vote.objects.filter(generation_id=item["id"])
    assert sorted((vote.api_client.project.name, vote.external_user_id, vote.desirable) for vote in votes) == [
        ("alpha", "user-9", False),
        ("alpha", "user-9", True),
    ]
    assert all(vote.api_client_id is not None for vote in votes)  # every vote records the key that cast it


# --- the annotator's browser session ----------------------------------------


def test_an_annotator_session_cannot_use_the_product_api(live_server, demo_model_dir):
    project = get_project("demo")
    registry.ensure_base_version(demo_model_dir, project=project)
    make_user("annie", project, "annotator")
    browser = browser_session(live_server, "annie")
    assert browser.get("/annotate/").status_code == 200  # the annotation pages are theirs
    # Before: 201 with votes_wanted=50, which the queue then served first to every annotator.
    steered = browser.post("/api/v1/generations/", json={"prompt": "p", "completion": "c", "votes_wanted": 50})
    generated = browser.post("/api/v1/generate/", json={"prompt": "What is 2+2?", "max_new_tokens": 3})
    voted = browser.post("/api/v1/votes/", json={"generation_id": 1, "desirable": True})
    assert (steered.status_code, generated.status_code, voted.status_code) == (401, 401, 401)
    assert not Generation.objects.exists()


def test_steering_fields_need_the_import_scope(live_server, alpha, app_a):
    refused = app_a.post("/api/v1/generations/", json={"prompt": "p", "completion": "c", "votes_wanted": 50})
    assert refused.status_code == 400
    assert refused.json() == {"votes_wanted": ["needs a key with the 'import' scope (project admins)"]}
    admin_key = key_session(live_server, alpha, scopes="generations:write,import")
    allowed = admin_key.post("/api/v1/generations/", json={"prompt": "p", "completion": "c", "votes_wanted": 2})
    assert allowed.status_code == 201
    assert list(Generation.objects.values_list("votes_wanted", flat=True)) == [2]


# --- de-duplication and conflicts stay in the project ----------------------------------------


def test_posting_another_projects_prompt_and_completion_learns_nothing(app_a, app_b):
    mine = create_item(app_a, external_id="a-msg-1")
    # Before: 200 with A's generation id and A's external_id: proof the prompt (personal data) exists.
    theirs = app_b.post(
        "/api/v1/generations/",
        json={"prompt": "Where is my parcel, order 5521?", "completion": "It left Lyon this morning."},
    )
    assert theirs.status_code == 201
    body = theirs.json()
    assert body["created"] is True and body["external_id"] is None and body["id"] != mine["id"]
    assert body["prompt_id"] != mine["prompt_id"]
    # B may use the same external id for its own item: ids are per project.
    assert create_item(app_b, completion="Another answer.", external_id="a-msg-1")["created"] is True


def test_conflict_messages_name_no_other_callers_ids(live_server, alpha, app_a):
    first = create_item(app_a, external_id="a-msg-1")
    colleague = key_session(live_server, alpha)
    renamed = colleague.post(
        "/api/v1/generations/",
        json={
            "prompt": "Where is my parcel, order 5521?",
            "completion": "It left Lyon this morning.",
            "external_id": "mine",
        },
    )
    taken = colleague.post("/api/v1/generations/", json={"prompt": "q", "completion": "a", "external_id": "a-msg-1"})
    assert (renamed.status_code, taken.status_code) == (409, 409)
    for response in (renamed, taken):
        message = json.dumps(response.json())
        assert str(first["id"]) not in message and str(first["prompt_id"]) not in message
    assert "a-msg-1" not in json.dumps(renamed.json())  # the other caller's external id stays theirs


# --- a staff user without a role ----------------------------------------


@pytest.fixture
def demo_with_everything(demo_model_dir, tmp_path):
    """The demo project with votes, a snapshot, a queued run, an active and a candidate version."""
    project = get_project("demo")
    active = registry.ensure_base_version(demo_model_dir, project=project)
    from tests.feedback.helpers import add_labelled_examples

    add_labelled_examples(4, 4)
    snapshot = create_snapshot(holdout=0.0, target_ratio=1.333, project=project)
    run = TrainingRun.objects.create(
        project=project, snapshot=snapshot, config={}, desirable_weight=1.0, undesirable_weight=1.0
    )
    candidate = ModelVersion.objects.create(
        project=project, name="candidate", base_model=demo_model_dir, artifact_path=demo_model_dir, parent=active
    )
    return {"project": project, "active": active, "candidate": candidate, "run": run, "snapshot": snapshot}


def test_a_staff_user_without_a_role_can_change_nothing(live_server, demo_with_everything):
    state = demo_with_everything
    make_user("stephen", is_staff=True)
    browser = browser_session(live_server, "stephen")
    upload = {"file": ("f.jsonl", io.BytesIO(b'{"prompt": "p", "completion": "c", "label": true}\n'))}
    # Before: every one of these worked for any is_staff account.
    attempts = {
        "snapshot (page)": browser.post(
            "/dashboard/snapshot/", data={"holdout": 0, "target_ratio": 1.3, "mode": "auto"}
        ),
        "snapshot (api)": browser.post("/api/v1/snapshots/", json={}),
        "import (api)": browser.post("/api/v1/imports/", files=upload),
        "promote": browser.post(f"/models/{state['candidate'].pk}/promote/"),
        "reject": browser.post(f"/models/{state['candidate'].pk}/reject/", data={"reason": "no"}),
        "roll back": browser.post("/models/rollback/"),
        "cancel": browser.post(f"/runs/{state['run'].pk}/cancel/"),
        "retrain": browser.post("/runs/new/", data={}),
    }
    assert {name: response.status_code for name, response in attempts.items()} == {name: 403 for name in attempts}
    assert DatasetSnapshot.objects.count() == 1 and not ImportBatch.objects.exists()
    assert TrainingRun.objects.get().status == TrainingRun.Status.QUEUED
    assert ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE) == state["active"]
    assert ModelVersion.objects.get(pk=state["candidate"].pk).status == ModelVersion.Status.CANDIDATE


def test_add_annotator_staff_makes_a_project_admin_not_a_superuser(live_server, alpha):
    call_command("add_annotator", "dana", "--password", PASSWORD, "--staff", "--project", "alpha", stdout=StringIO())
    dana = get_user_model().objects.get(username="dana")
    assert not dana.is_superuser  # before: is_superuser, every permission everywhere
    browser = browser_session(live_server, "dana")
    assert browser.get("/dashboard/?project=alpha").status_code == 200
    assert browser.get("/dashboard/?project=demo").status_code == 403


# --- promotion checks the artifact ----------------------------------------


@pytest.mark.parametrize("breakage", ["missing", "empty", "garbled weights"])
def test_a_version_whose_files_do_not_load_is_refused_and_serving_goes_on(
    live_server, demo_with_everything, tmp_path, breakage
):
    import shutil

    state = demo_with_everything
    broken = tmp_path / "broken"
    if breakage != "missing":
        broken.mkdir()
    if breakage == "garbled weights":
        shutil.copy(f"{state['active'].artifact_path}/config.json", broken / "config.json")
        (broken / "model.safetensors").write_bytes(b"\x00" * 3 + b"not a safetensors file")
    version = ModelVersion.objects.create(
        project=state["project"], name="broken", base_model="x", artifact_path=str(broken)
    )
    make_user("padma", state["project"], "admin")
    browser = browser_session(live_server, "padma")
    page = browser.post(f"/models/{version.pk}/promote/", follow_redirects=True)
    assert page.status_code == 200
    assert "Could not promote broken: broken cannot be promoted: its " in page.text
    assert ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE) == state["active"]
    # Before: the broken version became active and every generate call answered 500.
    app = key_session(live_server, state["project"])
    generated = app.post("/api/v1/generate/", json={"prompt": "What is 2+3?", "max_new_tokens": 3})
    assert generated.status_code == 200 and generated.json()["model_version"] == state["active"].name


# --- keys in the admin ----------------------------------------


def test_the_admin_shows_no_key_material(live_server, alpha):
    client, key = create_api_key(alpha, scopes="votes:write", name="mobile app")
    make_user("root", is_staff=True, is_superuser=True)
    browser = browser_session(live_server, "root")
    pages = [browser.get("/admin/projects/apiclient/"), browser.get(f"/admin/projects/apiclient/{client.pk}/change/")]
    for page in pages:
        assert page.status_code == 200
        assert client.prefix in page.text and "mobile app" in page.text
        # The key (its secret half) appears nowhere; the library's primary key is "prefix.hash", so
        # the admin's links carry a SHA-512 of the key, from which the key cannot be recovered.
        assert key.partition(".")[2] not in page.text and key not in page.text
    # Before: /admin/authtoken/ listed every token in clear to every staff user.
    assert browser.get("/admin/authtoken/tokenproxy/").status_code == 404
    stored = ApiClient.objects.values_list("hashed_key", flat=True).get(pk=client.pk)
    assert key not in stored and key.partition(".")[2] not in stored
