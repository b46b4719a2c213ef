"""Every role × every action: who may open each page and call each endpoint of a project.

Roles: an annotator of the project, its project admin, the installation's superuser, a staff user
with no role in it, an anonymous visitor. Actions: every page and form of the app, the Django
admin's key list, and the API endpoints as a browser session calls them. A refusal is 403 for a
signed-in user, the login page for an anonymous one on a page, 401 on the API; the product API
(generations, votes, generate) takes API keys only, so every session is refused there.
"""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model

from feedback.content import prompt_sha256
from feedback.models import Generation, ImportBatch, Job
from feedback.services import create_snapshot
from feedback.services.comparisons import start_comparison
from projects.selectors import default_project
from projects.services import create_api_key, set_membership
from tests.feedback.helpers import PASSWORD, add_labelled_examples
from training.models import HeldoutOutput, ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db

ROLES = ["annotator", "project_admin", "superuser", "staff_without_role", "anonymous"]
RATE, ADMIN, SUPERUSER_ONLY, NOBODY = "rate", "admin", "superuser", "nobody"


def _jsonl():
    upload = io.BytesIO(b'{"prompt": "p", "completion": "c", "label": true}\n')
    upload.name = "f.jsonl"
    return upload


# (name, method, url template, data, who may: RATE = annotators and up, ADMIN = project admins and up)
ACTIONS = [
    ("annotate page", "get", "/annotate/", None, RATE),
    ("vote", "post", "/annotate/vote/", {"generation_id": "{generation}", "label": "up"}, RATE),
    ("skip", "post", "/annotate/skip/", {"generation_id": "{generation}"}, RATE),
    ("answer comparison", "post", "/annotate/compare/", {"item_id": "{comparison_item}", "choice": "left"}, RATE),
    ("undo", "post", "/annotate/undo/", {}, RATE),
    ("dashboard", "get", "/dashboard/", None, ADMIN),
    ("snapshot", "post", "/dashboard/snapshot/", {"holdout": "0", "target_ratio": "1.33", "mode": "auto"}, ADMIN),
    ("import page", "get", "/dashboard/import/", None, ADMIN),
    ("import", "post", "/dashboard/import/", "upload", ADMIN),
    ("job page", "get", "/dashboard/jobs/{job}/", None, ADMIN),
    ("runs", "get", "/runs/", None, ADMIN),
    ("run page", "get", "/runs/{run}/", None, ADMIN),
    ("run progress", "get", "/runs/{run}/progress.json", None, ADMIN),
    ("retrain form", "get", "/runs/new/", None, ADMIN),
    ("retrain", "post", "/runs/new/", {"max_steps": "1"}, ADMIN),
    ("cancel run", "post", "/runs/{run}/cancel/", {}, ADMIN),
    ("models", "get", "/models/", None, ADMIN),
    ("compare", "get", "/models/compare/", None, ADMIN),
    ("start blind comparison", "post", "/models/compare/blind/", {"a": "{active}", "b": "{candidate}"}, ADMIN),
    ("promote", "post", "/models/{candidate}/promote/", {}, ADMIN),
    ("reject", "post", "/models/{candidate}/reject/", {"reason": "worse"}, ADMIN),
    ("roll back", "post", "/models/rollback/", {}, ADMIN),
    ("api keys page", "get", "/keys/", None, ADMIN),
    ("create api key", "post", "/keys/", {"name": "app", "scopes": ["votes:write"]}, ADMIN),
    ("revoke api key", "post", "/keys/{key_prefix}/revoke/", {}, ADMIN),
    ("members page", "get", "/members/", None, ADMIN),
    ("add member", "post", "/members/", {"username": "newcomer", "role": "admin"}, ADMIN),
    ("remove member", "post", "/members/{member}/remove/", {}, ADMIN),
    ("admin: api keys", "get", "/admin/projects/apiclient/", None, SUPERUSER_ONLY),
    ("admin: votes", "get", "/admin/feedback/vote/", None, SUPERUSER_ONLY),
    ("api: list snapshots", "get", "/api/v1/snapshots/", None, ADMIN),
    ("api: snapshot", "post", "/api/v1/snapshots/", {}, ADMIN),
    ("api: import", "post", "/api/v1/imports/", "upload", ADMIN),
    ("api: job", "get", "/api/v1/jobs/{job}/", None, ADMIN),
    ("api: skipped lines", "get", "/api/v1/jobs/{job}/skipped/", None, ADMIN),
    ("api: skipped lines (csv)", "get", "/api/v1/jobs/{job}/skipped/csv/", None, ADMIN),
    ("api: generations", "post", "/api/v1/generations/", {"prompt": "p", "completion": "c", "votes_wanted": 5}, NOBODY),
    (
        "api: generations batch",
        "post",
        "/api/v1/generations/batch/",
        {"generations": [{"prompt": "p", "completion": "c"}]},
        NOBODY,
    ),
    ("api: votes", "post", "/api/v1/votes/", {"generation_id": "{generation}", "desirable": True}, NOBODY),
    ("api: generate", "post", "/api/v1/generate/", {"prompt": "What is 1+1?"}, NOBODY),
    # The OpenAI-compatible API, forwarded to the serving process: keys only, as the product API.
    (
        "openai: chat completions",
        "post",
        "/v1/chat/completions",
        {"model": "demo", "messages": [{"role": "user", "content": "What is 1+1?"}]},
        NOBODY,
    ),
]
API_PREFIXES = ("/api/", "/v1/")

MAY = {
    "annotator": {RATE},
    "project_admin": {RATE, ADMIN},
    "superuser": {RATE, ADMIN, SUPERUSER_ONLY},
    "staff_without_role": set(),
    "anonymous": set(),
}


@pytest.fixture
def world(tmp_path):
    project = default_project()
    add_labelled_examples(3, 3)
    generation = Generation.objects.filter(project=project).first()
    snapshot = create_snapshot(holdout=0.0, target_ratio=1.333, project=project)
    active = ModelVersion.objects.create(
        project=project, name="base", base_model="/m", artifact_path="/m", status=ModelVersion.Status.ACTIVE
    )
    candidate = ModelVersion.objects.create(
        project=project, name="candidate", base_model="/m", artifact_path=str(tmp_path / "missing"), parent=active
    )
    run = TrainingRun.objects.create(project=project, snapshot=snapshot, desirable_weight=1.0, undesirable_weight=1.0)
    for version, answer in ((active, "3"), (candidate, "2")):
        HeldoutOutput.objects.create(
            version=version, prompt="1+1?", prompt_sha256=prompt_sha256("1+1?"), completion=answer
        )
    comparison = start_comparison(candidate, active)
    client, _ = create_api_key(project, scopes="read")
    member = get_user_model().objects.create_user("member")
    set_membership(project, member, "annotator")
    get_user_model().objects.create_user("newcomer")
    report = tmp_path / "skipped.jsonl"
    report.write_text('{"line": 2, "field": null, "reason": "malformed JSON"}\n')
    batch = ImportBatch.objects.create(project=project, filename="f.jsonl", sha256="0" * 64, skipped_report=report)
    job = Job.objects.create(project=project, kind=Job.Kind.IMPORT, status=Job.Status.SUCCEEDED, import_batch=batch)
    return {
        "job": job.pk,
        "project": project,
        "generation": generation.pk,
        "run": run.pk,
        "candidate": candidate.pk,
        "active": active.pk,
        "comparison_item": comparison.items.get().pk,
        "key_prefix": client.prefix,
        "member": member.pk,
    }


def sign_in(client, role: str, project) -> None:
    if role == "anonymous":
        return
    flags = {"superuser": {"is_staff": True, "is_superuser": True}, "staff_without_role": {"is_staff": True}}
    user = get_user_model().objects.create_user(role, password=PASSWORD, **flags.get(role, {}))
    if role in ("annotator", "project_admin"):
        set_membership(project, user, "annotator" if role == "annotator" else "admin")
    client.force_login(user)


def fill(value, world):
    if isinstance(value, str) and value.startswith("{"):
        return world[value.strip("{}")]
    return value


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name, method, url, data, needs", ACTIONS, ids=[action[0] for action in ACTIONS])
def test_role_by_action(client, world, role, name, method, url, data, needs):
    sign_in(client, role, world["project"])
    url = url.format(**world)
    if method == "get":
        response = client.get(url)
    elif data == "upload":
        response = client.post(url, {"file": _jsonl()})
    elif url.startswith(API_PREFIXES):
        response = client.post(
            url, {key: fill(value, world) for key, value in data.items()}, content_type="application/json"
        )
    else:
        response = client.post(url, {key: fill(value, world) for key, value in data.items()})
    status = response.status_code
    sent_to_login = status == 302 and "/login/" in response.url

    if needs in MAY[role]:
        assert status not in (401, 403) and not sent_to_login, f"{role} may {name}: got {status}"
    elif role == "anonymous":
        expected = "401" if url.startswith(API_PREFIXES) else "the login page"
        assert (status == 401) if url.startswith(API_PREFIXES) else sent_to_login, f"{name}: {expected}, got {status}"
    elif needs == NOBODY:
        # The product API: a browser session is no API key.
        assert status == 401, f"{role} via a session on {name}: got {status}"
    else:
        assert status == 403, f"{role} may not {name}: got {status}"


def test_the_matrix_covers_every_url_of_the_pages_and_the_api():
    from django.urls import get_resolver

    def names(resolver, prefix=""):
        for pattern in resolver.url_patterns:
            if hasattr(pattern, "url_patterns"):
                yield from names(pattern, prefix + str(pattern.pattern))
            else:
                yield prefix + str(pattern.pattern)

    covered = {url for _, _, url, _, _ in ACTIONS}
    not_actions = {
        "",
        "accounts/login/",
        "accounts/logout/",
        "healthz",
        # Operator endpoints with their own access rule (localhost or a metrics token): tests/ops.
        "readyz",
        "metrics",
        "favicon.ico",
        "api/schema/",
        "api/docs/",
        "api/redoc/",
        "api/v1/generate",
    }  # api/v1/generate: the old path of api/v1/generate/
    for route in names(get_resolver()):
        if route.startswith("admin/") or route in not_actions:
            continue
        as_url = "/" + route.replace("<int:run_id>", "{run}").replace("<int:version_id>", "{candidate}").replace(
            "<str:prefix>", "{key_prefix}"
        ).replace("<int:user_id>", "{member}").replace("<int:job_id>", "{job}").replace(
            "<path:path>", "chat/completions"
        )
        assert as_url in covered, f"{as_url} has no row in the role × action matrix"
