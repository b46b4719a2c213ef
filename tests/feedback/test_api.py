"""feedback.api, the ingestion API under /api/v1/ (real requests through DRF's test client).

- votes: one vote per voter per generation, from the key itself or one of its end users; the key
  header's messages, errors naming fields, the first vote standing, the schema; a browser session
  cannot use the product API at all; a key revoked, expired or stripped of a scope in this process
  is refused on the very next request and writes nothing (other processes: tests/projects/test_authentication.py);
- access: writes need a key with the right scope, admin endpoints refuse other keys, the schema is served;
- generations: idempotent, all-or-nothing batches;
- imports: staff upload a JSONL file; a bad file is a 400 naming line and field.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta

import pytest
from django.db import transaction
from django.middleware.csrf import get_token
from django.test import RequestFactory
from django.utils import timezone
from rest_framework.test import APIClient

from feedback.models import Generation, ImportBatch, Prompt, Vote
from feedback.services import jobs
from projects.models import ApiClient
from projects.services import revoke_api_key
from tests.feedback.helpers import add_generation, key_client

# --- api votes ----------------------------------------


@pytest.mark.django_db
def test_an_end_user_vote_is_recorded_once(api_client):
    generation = add_generation()
    body = {"generation_id": generation.pk, "desirable": True, "external_user_id": "end-user-7", "comment": "nice"}
    first = api_client.post("/api/v1/votes/", body, format="json")
    # A repeated submission (even with another label) changes nothing: the first vote stands.
    again = api_client.post("/api/v1/votes/", {**body, "desirable": False}, format="json")
    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200 and again.json() == {**first.json(), "created": False}
    vote = Vote.objects.get()
    assert vote.api_client_id == api_client.api_client.pk
    assert (vote.external_user_id, vote.annotator, vote.desirable, vote.comment, vote.source) == (
        "end-user-7",
        None,
        True,
        "nice",
        "api",
    )


@pytest.mark.django_db
def test_without_an_external_user_the_key_is_the_voter(api_client):
    generation = add_generation()
    response = api_client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": False}, format="json")
    assert response.status_code == 201
    vote = Vote.objects.get()
    assert (vote.api_client_id, vote.annotator, vote.external_user_id, vote.desirable) == (
        api_client.api_client.pk,
        None,
        None,
        False,
    )


@pytest.mark.django_db
def test_two_end_users_on_one_generation_are_two_votes(api_client):
    generation = add_generation()
    for user, label in (("u1", True), ("u2", False)):
        assert (
            api_client.post(
                "/api/v1/votes/",
                {"generation_id": generation.pk, "desirable": label, "external_user_id": user},
                format="json",
            ).status_code
            == 201
        )
    assert sorted(Vote.objects.values_list("external_user_id", "desirable")) == [("u1", True), ("u2", False)]


@pytest.mark.django_db
def test_vote_by_the_generation_external_id(api_client):
    generation = add_generation(external_id="chat-msg-42")
    response = api_client.post(
        "/api/v1/votes/",
        {"generation_external_id": "chat-msg-42", "desirable": True, "external_user_id": "u"},
        format="json",
    )
    assert response.status_code == 201 and response.json()["generation_id"] == generation.pk


@pytest.mark.django_db
def test_unknown_generation_is_404_and_saves_nothing(api_client):
    by_id = api_client.post("/api/v1/votes/", {"generation_id": 12345, "desirable": True}, format="json")
    by_external = api_client.post(
        "/api/v1/votes/", {"generation_external_id": "nope", "desirable": True}, format="json"
    )
    assert by_id.status_code == 404 and "generation_id" in by_id.json()
    assert by_external.status_code == 404 and "generation_external_id" in by_external.json()
    assert Vote.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"desirable": True}, "non_field_errors"),
        ({"generation_id": 1, "generation_external_id": "x", "desirable": True}, "non_field_errors"),
        ({"generation_id": 1}, "desirable"),
        ({"generation_id": 1, "desirable": "maybe"}, "desirable"),
        ({"generation_id": "one", "desirable": True}, "generation_id"),
    ],
)
def test_bad_votes_name_the_field(api_client, body, field):
    response = api_client.post("/api/v1/votes/", body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert Vote.objects.count() == 0


# --- api access ----------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/api/v1/generations/", "/api/v1/generations/batch/", "/api/v1/votes/", "/api/v1/imports/", "/api/v1/snapshots/"],
)
def test_anonymous_writes_are_refused(url):
    response = APIClient().post(url, {}, format="json")
    assert response.status_code == 401


@pytest.mark.django_db
def test_a_wrong_key_is_refused():
    generation = add_generation()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key not-a-real.key")
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json")
    assert response.status_code == 401
    assert Vote.objects.count() == 0


@pytest.mark.django_db
def test_admin_session_writes_need_csrf(db):
    from tests.feedback.helpers import make_annotator

    project_admin = make_annotator("padmin", role="admin")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(project_admin)
    response = client.post("/api/v1/snapshots/", {}, format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]


@pytest.mark.django_db
def test_snapshots_need_the_import_scope_and_listing_the_read_scope(api_client):
    # A product key (no `import`) may list (it has `read`) but not cut a snapshot.
    assert api_client.get("/api/v1/snapshots/").status_code == 200
    refused = api_client.post("/api/v1/snapshots/", {}, format="json")
    assert refused.status_code == 403 and "'import'" in refused.json()["detail"]
    votes_only = key_client(scopes="votes:write")
    assert votes_only.get("/api/v1/snapshots/").status_code == 403


@pytest.mark.django_db
def test_openapi_schema_lists_the_feedback_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/generations/",
        "/api/v1/generations/batch/",
        "/api/v1/votes/",
        "/api/v1/imports/",
        "/api/v1/snapshots/",
    ):
        assert "post" in paths[path], path
    assert not Generation.objects.exists()


# --- api generations ----------------------------------------


@pytest.mark.django_db
def test_create_a_generation_then_the_same_again(api_client):
    body = {"prompt": [{"role": "user", "content": "What is 3+4?"}], "completion": "7", "external_id": "app-1"}
    first = api_client.post("/api/v1/generations/", body, format="json")
    again = api_client.post("/api/v1/generations/", body, format="json")
    assert first.status_code == 201 and first.json()["created"] is True
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["id"] == first.json()["id"]
    generation = Generation.objects.get()
    assert generation.external_id == "app-1" and generation.source == "api"
    assert generation.prompt.content == [{"role": "user", "content": "What is 3+4?"}]


@pytest.mark.django_db
def test_an_external_id_cannot_name_two_generations(api_client):
    api_client.post("/api/v1/generations/", {"prompt": "p", "completion": "a", "external_id": "x"}, format="json")
    response = api_client.post(
        "/api/v1/generations/", {"prompt": "p", "completion": "b", "external_id": "x"}, format="json"
    )
    assert response.status_code == 409
    assert "external_id" in response.json()
    assert Generation.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "p", "completion": "  "}, "completion"),
        ({"prompt": "", "completion": "a"}, "prompt"),
        ({"prompt": [{"role": "user"}], "completion": "a"}, "prompt"),
        ({"completion": "a"}, "prompt"),
        ({"prompt": "p", "completion": "a", "model_version": 999}, "model_version"),
    ],
)
def test_bad_fields_are_named(api_client, body, field):
    response = api_client.post("/api/v1/generations/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert Generation.objects.count() == 0


@pytest.mark.django_db
def test_a_batch_is_saved_whole(api_client):
    items = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(5)]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 201
    assert [row["created"] for row in response.json()["generations"]] == [True] * 5
    assert Generation.objects.count() == 5


@pytest.mark.django_db
def test_a_batch_with_one_bad_item_saves_nothing_and_names_the_item(api_client):
    items = [
        {"prompt": "q0", "completion": "a"},
        {"prompt": "q1", "completion": ""},
        {"prompt": "q2", "completion": "c"},
    ]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 400
    errors = response.json()["generations"]
    assert list(errors) == ["1"] and "completion" in errors["1"]
    assert (Generation.objects.count(), Prompt.objects.count()) == (0, 0)


@pytest.mark.django_db
def test_a_batch_with_a_conflict_saves_nothing(api_client):
    api_client.post("/api/v1/generations/", {"prompt": "p", "completion": "a", "external_id": "x"}, format="json")
    items = [{"prompt": "new", "completion": "n"}, {"prompt": "p", "completion": "other", "external_id": "x"}]
    response = api_client.post("/api/v1/generations/batch/", {"generations": items}, format="json")
    assert response.status_code == 409
    assert Generation.objects.count() == 1
    assert not Prompt.objects.filter(content="new").exists()


# --- api import (a job: 202, then the worker's run, then the status URL) ----------------------


def upload(client, lines: list, name="feedback.jsonl", **fields):
    data = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()
    handle = io.BytesIO(data)
    handle.name = name
    return client.post("/api/v1/imports/", {"file": handle, **fields}, format="multipart")


def worker_runs(client, accepted) -> dict:
    """What the worker does with the queued job, then what its status URL answers."""
    assert accepted.status_code == 202, accepted.content
    job = accepted.json()
    assert job["status"] == "queued" and accepted["Location"] == job["status_url"]
    jobs.run_job(job["id"])
    status = client.get(job["status_url"])
    assert status.status_code == 200
    return status.json()


@pytest.mark.django_db
def test_staff_import_a_paired_file(staff_api_client):
    job = worker_runs(
        staff_api_client,
        upload(staff_api_client, [{"prompt": "p", "chosen": "good", "rejected": "bad"}], format="paired"),
    )
    assert (job["status"], job["progress"], job["errors"]) == ("succeeded", 1.0, [])
    body = job["result"]
    assert (body["format"], body["votes_created"], body["generations_created"]) == ("paired", 2, 2)
    assert ImportBatch.objects.get().filename == "feedback.jsonl"
    assert body["import_id"] == ImportBatch.objects.get().pk


@pytest.mark.django_db
def test_a_bad_line_fails_the_job_naming_line_and_field(staff_api_client):
    job = worker_runs(
        staff_api_client,
        upload(
            staff_api_client,
            [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "p", "completion": "b", "label": 1}],
        ),
    )
    assert job["status"] == "failed" and job["result"] is None
    [error] = job["errors"]
    assert (error["line"], error["field"]) == (2, "label")
    assert "line 2: field 'label'" in error["detail"] and "nothing was imported" in error["detail"]
    assert (Generation.objects.count(), Vote.objects.count(), ImportBatch.objects.count()) == (0, 0, 0)


@pytest.mark.django_db
def test_scored_import_takes_the_threshold(staff_api_client):
    job = worker_runs(
        staff_api_client,
        upload(
            staff_api_client,
            [{"prompt": "p", "completion": "a", "score": 0.9}, {"prompt": "p", "completion": "b", "score": 0.1}],
            threshold=0.5,
        ),
    )
    assert job["status"] == "succeeded"
    assert sorted(Vote.objects.values_list("generation__completion", "desirable")) == [("a", True), ("b", False)]


@pytest.mark.django_db
def test_keys_without_the_import_scope_cannot_import(api_client):
    response = upload(api_client, [{"prompt": "p", "completion": "a", "label": True}])
    assert response.status_code == 403
    assert Vote.objects.count() == 0


# --- vote contract ----------------------------------------


URL = "/api/v1/votes/"


@pytest.mark.django_db
def test_no_credentials_is_drfs_401_with_its_challenge():
    response = APIClient().post(URL, {"generation_id": 1, "desirable": True}, format="json")
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header, detail",
    [
        ("Api-Key", "Invalid API key header: give one key after the keyword."),
        ("Bearer a b", "Invalid API key header: give one key after the keyword."),
        ("Api-Key " + "0" * 40, "Invalid API key."),
        ("Token abcdefgh." + "0" * 32, "Invalid API key."),
    ],
)
def test_bad_key_headers_get_clear_messages(header, detail):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.post(URL, {"generation_id": 1, "desirable": True}, format="json")
    assert (response.status_code, response.json()) == (401, {"detail": detail})


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{"desirable": "maybe"}, {"generation_external_id": "x", "desirable": True}])
def test_a_wrong_key_is_401_whatever_the_body(body):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key abcdefgh." + "0" * 32)
    assert client.post(URL, body, format="json").status_code == 401


@pytest.mark.django_db
def test_other_methods_are_405_for_a_caller_and_401_for_a_stranger(api_client):
    response = api_client.get(URL)
    assert (response.status_code, response.json()) == (405, {"detail": 'Method "GET" not allowed.'})
    assert APIClient().get(URL).status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize("raw", [b"{not json", b'{"generation_id": 1, "desirable": NaN}'])
def test_malformed_json_is_a_400_parse_error(api_client, raw):
    response = api_client.generic("POST", URL, raw, content_type="application/json")
    assert response.status_code == 400 and response.json()["detail"].startswith("JSON parse error - ")
    assert not Vote.objects.exists()


@pytest.mark.django_db
def test_an_empty_body_names_the_missing_fields(api_client):
    response = api_client.generic("POST", URL, b"", content_type="application/json")
    assert response.status_code == 400 and "desirable" in response.json()


@pytest.mark.django_db
def test_a_repeat_returns_the_standing_vote(api_client):
    generation = add_generation()
    first = api_client.post(URL, {"generation_id": generation.pk, "desirable": True}, format="json")
    again = api_client.post(URL, {"generation_id": generation.pk, "desirable": False}, format="json")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == {
        "id": first.json()["id"],
        "generation_id": generation.pk,
        "desirable": True,
        "created": False,
    }
    assert list(Vote.objects.values_list("api_client_id", "desirable")) == [(api_client.api_client.pk, True)]


@pytest.mark.django_db
def test_the_schema_still_documents_the_vote_endpoint(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    operation = schema["paths"]["/api/v1/votes/"]["post"]
    assert set(schema["paths"]["/api/v1/votes/"]) == {"post"}
    assert operation["operationId"] == "record_vote"
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/VoteIn"}
    assert {"200", "201"} <= set(operation["responses"])
    # Its errors are documented too: a 400 naming the fields, a 404 for an unknown generation.
    assert {"400", "401", "403", "404", "413", "415", "429"} <= set(operation["responses"])
    # The product API takes API keys only: no cookie (session) scheme on it.
    assert {name for requirement in operation["security"] for name in requirement} == {"projectApiKey"}
    scheme = schema["components"]["securitySchemes"]["projectApiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")


# --- vote payload ----------------------------------------


# (body, the fields its 400 names); "GEN" stands for an existing generation's id.
BAD_BODIES = [
    ({"desirable": True}, {"non_field_errors"}),
    ({"generation_id": "GEN", "generation_external_id": "ext", "desirable": True}, {"non_field_errors"}),
    ({"generation_id": "GEN"}, {"desirable"}),
    ({"generation_id": 0, "desirable": True}, {"generation_id"}),
    ({"generation_id": "one", "desirable": True}, {"generation_id"}),
    ({"generation_id": "GEN", "desirable": "maybe"}, {"desirable"}),
    ({"generation_id": "GEN", "desirable": True, "external_user_id": "x" * 201}, {"external_user_id"}),
    ({"generation_id": "GEN", "desirable": True, "comment": "c" * 5001}, {"comment"}),
    ({"generation_id": ["GEN"], "desirable": None}, {"generation_id", "desirable"}),
]


@pytest.mark.django_db
@pytest.mark.parametrize("body, fields", BAD_BODIES)
def test_a_bad_body_names_its_fields(api_client, body, fields):
    generation = add_generation()
    body = {
        key: (generation.pk if value == "GEN" else [generation.pk] if value == ["GEN"] else value)
        for key, value in body.items()
    }
    response = api_client.post(URL, body, format="json")
    assert response.status_code == 400
    assert set(response.json()) == fields
    assert not Vote.objects.exists()


@pytest.mark.django_db
def test_a_non_object_body_is_rejected(api_client):
    response = api_client.post(URL, [1, 2], format="json")
    assert response.status_code == 400 and set(response.json()) == {"non_field_errors"}


# --- a browser session cannot use the product API ----------------------------------------


def session_client(user) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_a_session_vote_without_csrf_token_is_refused(annotator):
    generation = add_generation()
    response = session_client(annotator).post(
        "/api/v1/votes/", {"generation_id": generation.pk, "desirable": True, "external_user_id": "u"}, format="json"
    )
    assert response.status_code == 401
    assert not Vote.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["annotator", "admin"])
def test_a_session_vote_even_with_csrf_is_refused(role):
    # Annotators rate on /annotate/; the product API is for keys only, whatever the session's role.
    from tests.feedback.helpers import make_annotator

    user = make_annotator(f"someone-{role}", role=role)
    generation = add_generation()
    client = session_client(user)
    csrf = get_token(RequestFactory().get("/"))
    client.cookies["csrftoken"] = csrf
    response = client.post(
        "/api/v1/votes/", {"generation_id": generation.pk, "desirable": False}, format="json", HTTP_X_CSRFTOKEN=csrf
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Authentication credentials were not provided."}
    assert not Vote.objects.exists()


@pytest.mark.django_db
def test_an_inactive_session_user_is_not_authenticated(annotator):
    generation = add_generation()
    client = session_client(annotator)
    annotator.is_active = False
    annotator.save(update_fields=["is_active"])
    response = client.post("/api/v1/votes/", {"generation_id": generation.pk, "desirable": True}, format="json")
    assert response.status_code == 401
    assert not Vote.objects.exists()


# --- revoked keys over autocommit ----------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_over_autocommit_a_revoked_key_writes_nothing(api_client):
    assert transaction.get_autocommit()
    generation = add_generation()
    body = {"generation_id": generation.pk, "desirable": True}
    first = api_client.post(URL, body, format="json")
    again = api_client.post(URL, {**body, "desirable": False}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == {**first.json(), "created": False}
    revoke_api_key(api_client.api_client)
    assert api_client.post(URL, body, format="json").status_code == 401
    assert api_client.post(URL, {**body, "external_user_id": "u"}, format="json").status_code == 401
    assert list(Vote.objects.values_list("api_client_id", "desirable")) == [(api_client.api_client.pk, True)]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_wrong_key_learns_nothing_about_generations():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key abcdefgh." + "0" * 32)
    response = client.post(URL, {"generation_id": 999_999, "desirable": True}, format="json")
    assert (response.status_code, response.json()) == (401, {"detail": "Invalid API key."})
    assert not Vote.objects.exists()


# --- key revocation, expiry and scopes take effect at once ----------------------------------------


def vote(client, generation, voter=None):
    body = {"generation_id": generation.pk, "desirable": True}
    if voter:
        body["external_user_id"] = voter
    return client.post("/api/v1/votes/", body, format="json")


@pytest.mark.django_db
def test_a_revoked_key_cannot_vote_right_after_voting(api_client):
    generation = add_generation()
    assert vote(api_client, generation, "u1").status_code == 201
    revoke_api_key(api_client.api_client)
    refused = vote(api_client, generation, "u2")
    assert refused.status_code == 401 and refused.json() == {"detail": "This API key has been revoked."}
    assert list(Vote.objects.values_list("external_user_id", flat=True)) == ["u1"]


@pytest.mark.django_db
def test_a_revoked_key_cannot_repeat_a_vote_either(api_client):
    # A repeat inserts nothing; the answer must still be 401, not "already voted".
    generation = add_generation()
    assert vote(api_client, generation).status_code == 201
    revoke_api_key(api_client.api_client)
    assert vote(api_client, generation).status_code == 401


@pytest.mark.django_db
def test_an_expired_key_is_refused_at_once(api_client):
    generation = add_generation()
    assert vote(api_client, generation, "u1").status_code == 201
    # As the admin does it: a save, which also makes every request of this process ask the database.
    stored = ApiClient.objects.get(pk=api_client.api_client.pk)
    stored.expiry_date = timezone.now() - timedelta(seconds=1)
    stored.save(update_fields=["expiry_date"])
    refused = vote(api_client, generation, "u2")
    assert refused.status_code == 401 and refused.json() == {"detail": "This API key has expired."}
    assert Vote.objects.count() == 1


@pytest.mark.django_db
def test_drf_endpoints_refuse_a_revoked_key_at_once(api_client):
    body = {"prompt": "What is 1+1?", "completion": "2"}
    assert api_client.post("/api/v1/generations/", body, format="json").status_code == 201
    revoke_api_key(api_client.api_client)
    assert api_client.post("/api/v1/generations/", body, format="json").status_code == 401


@pytest.mark.django_db
def test_a_scope_taken_away_is_refused_at_once(staff_api_client):
    assert staff_api_client.post("/api/v1/snapshots/", {}, format="json").status_code == 202  # allowed
    stored = ApiClient.objects.get(pk=staff_api_client.api_client.pk)
    stored.scopes = ["read"]
    stored.save(update_fields=["scopes"])
    assert staff_api_client.post("/api/v1/snapshots/", {}, format="json").status_code == 403
    assert staff_api_client.get("/api/v1/snapshots/").status_code == 200


@pytest.mark.django_db
def test_a_key_records_when_it_was_last_used(api_client):
    assert ApiClient.objects.get(pk=api_client.api_client.pk).last_used_at is None
    before = timezone.now()
    assert vote(api_client, add_generation()).status_code == 201
    assert ApiClient.objects.get(pk=api_client.api_client.pk).last_used_at >= before
