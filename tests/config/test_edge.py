"""Input that used to make a 500 (found against gunicorn and PostgreSQL) is refused at the edge: a
400 naming the field, a JSON 413 for a body over its limit, a JSON 415 for a body that is not
JSON. Run these on PostgreSQL too: it is the database that refused NUL characters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from feedback.models import Generation, ImportBatch, Job, Vote
from feedback.services import jobs
from tests.feedback.helpers import ALL_SCOPES, add_generation, key_client, make_annotator

pytestmark = pytest.mark.django_db

BEYOND_THE_DATABASE = 2**63


@pytest.fixture
def app(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "var"
    return key_client(scopes=ALL_SCOPES)


def post_json(client, url: str, body, **extra):
    return client.post(url, data=json.dumps(body), content_type="application/json", **extra)


@pytest.mark.parametrize(
    "url, body, field",
    [
        ("/api/v1/votes/", {"generation_id": BEYOND_THE_DATABASE, "desirable": True}, "generation_id"),
        (
            "/api/v1/generations/",
            {"prompt": "p", "completion": "c", "model_version": BEYOND_THE_DATABASE},
            "model_version",
        ),
    ],
)
def test_ids_beyond_the_databases_range_are_a_400_naming_the_field(app, url, body, field):
    response = post_json(app, url, body)
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_a_job_id_beyond_the_databases_range_is_a_404(app):
    response = app.get(f"/api/v1/jobs/{BEYOND_THE_DATABASE}/")
    assert response.status_code == 404 and "detail" in response.json()


def test_the_annotate_form_refuses_an_id_beyond_the_databases_range(client):
    client.force_login(make_annotator("rater"))
    response = client.post("/annotate/vote/", {"generation_id": str(BEYOND_THE_DATABASE), "label": "up"}, follow=True)
    assert response.status_code == 200
    assert "Vote not saved" in response.content.decode()
    assert not Vote.objects.exists()


@pytest.mark.parametrize(
    "body, field, problem",
    [
        ({"prompt": "a\u0000b", "completion": "c"}, "prompt", "NUL"),
        ({"prompt": [{"role": "user", "content": "x\u0000"}], "completion": "c"}, "prompt[0].content", "NUL"),
        ({"prompt": "p", "completion": "c", "external_id": "id\u0000"}, "external_id", "NUL"),
        ({"prompt": "p\ud800", "completion": "c"}, "prompt", "surrogate"),
        ({"prompt": "p", "completion": "\udfff"}, "completion", "surrogate"),
    ],
)
def test_nul_characters_and_lone_surrogates_are_refused_naming_the_field(app, body, field, problem):
    # json.dumps writes \u0000 and \ud800 as escapes, exactly what a client would send.
    response = post_json(app, "/api/v1/generations/", body)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors and problem.lower() in json.dumps(errors).lower(), errors
    assert not Generation.objects.exists()


def test_a_comment_with_a_lone_surrogate_is_a_400(app):
    generation = add_generation()
    response = post_json(
        app, "/api/v1/votes/", {"generation_id": generation.pk, "desirable": True, "comment": "\ud83d"}
    )
    assert response.status_code == 400 and "comment" in response.json()
    assert not Vote.objects.exists()


def test_a_prompt_nested_thousands_of_lists_deep_is_a_400(app):
    body = '{"prompt": ' + "[" * 3000 + "]" * 3000 + ', "completion": "c"}'
    response = app.post("/api/v1/generations/", data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper" in json.dumps(response.json())


def test_nan_is_not_a_json_number(app):
    response = app.post("/api/v1/snapshots/", data='{"holdout": NaN}', content_type="application/json")
    assert response.status_code == 400 and not Job.objects.exists()


def test_a_body_over_the_limit_is_a_json_413(app, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    body = {"prompt": "p" * (3 * 64 * 1024), "completion": "c"}
    response = post_json(app, "/api/v1/generations/", body)
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json" and "larger than the limit" in response.json()["detail"]


@pytest.mark.parametrize("url", ["/api/v1/votes/", "/api/v1/generations/", "/api/v1/snapshots/"])
def test_json_sent_as_text_plain_is_a_json_415_not_parsed(app, url):
    generation = add_generation()
    body = json.dumps({"generation_id": generation.pk, "desirable": True, "prompt": "p", "completion": "c"})
    response = app.post(url, data=body, content_type="text/plain")
    assert response.status_code == 415, response.content
    assert "text/plain" in response.json()["detail"]
    assert not Vote.objects.exists() and not Job.objects.exists()


def upload(client, data: bytes, **fields):
    handle = io.BytesIO(data)
    handle.name = "feedback.jsonl"
    return client.post("/api/v1/imports/", {"file": handle, **fields}, format="multipart")


def test_an_upload_over_the_cap_is_a_json_413_and_leaves_no_file(app, settings):
    settings.PROSPECT_IMPORT_MAX_UPLOAD_BYTES = 10_000
    line = json.dumps({"prompt": "p", "completion": "c", "label": True}).encode() + b"\n"
    # Declared over the cap (with the form's slack): refused before the body is read.
    assert upload(app, line * 3000).status_code == 413
    # Within the declared slack but over the cap as it streams: refused by the upload handler.
    response = upload(app, line * (10_000 // len(line) + 20))
    assert response.status_code == 413, response.content
    assert "upload limit of 10000 bytes" in response.json()["detail"]
    assert not Job.objects.exists()
    uploads = settings.DATA_DIR / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_an_uploaded_file_goes_to_disk_and_the_job_deletes_it_when_done(app, settings):
    response = upload(app, json.dumps({"prompt": "p", "completion": "c", "label": True}).encode() + b"\n")
    job = Job.objects.get(pk=response.json()["id"])
    assert response.status_code == 202 and job.upload_bytes > 0
    assert Path(job.upload_path).parent == (settings.DATA_DIR / "uploads").resolve()
    jobs.run_job(job.pk)
    assert ImportBatch.objects.count() == 1
    assert not any((settings.DATA_DIR / "uploads").iterdir())


def test_a_nul_in_an_imported_line_fails_the_job_naming_line_and_field(app):
    lines = [
        {"prompt": "p", "completion": "fine", "label": True},
        {"prompt": "p", "completion": "bad\u0000", "label": True},
    ]
    response = upload(app, "\n".join(json.dumps(line) for line in lines).encode())
    job = jobs.run_job(response.json()["id"])
    assert job.status == Job.Status.FAILED
    assert (job.errors[0]["line"], job.errors[0]["field"]) == (2, "completion")
    assert "NUL" in job.errors[0]["detail"]
    assert not Vote.objects.exists()


def test_a_deeply_nested_imported_line_fails_the_job_naming_the_line(app):
    data = b'{"prompt": "p", "completion": "c", "label": true}\n{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    job = jobs.run_job(upload(app, data).json()["id"])
    assert job.status == Job.Status.FAILED and job.errors[0]["line"] == 2


@pytest.mark.parametrize(
    "method, url",
    [
        ("post", "/keys/ab%00c/revoke/"),
        ("get", "/dashboard/?project=a%00b"),
        ("get", "/api/v1/snapshots/?project=a%00b"),
    ],
)
def test_a_nul_in_the_url_is_a_400_not_a_database_error(client, method, url):
    client.force_login(make_annotator("padmin", role="admin"))
    response = getattr(client, method)(url)
    assert response.status_code == 400
    assert "NUL" in (response.json()["detail"] if url.startswith("/api/") else response.content.decode())
