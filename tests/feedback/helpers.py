"""Small builders shared by the feedback tests."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model

from feedback.services.generations import GenerationInput, create_generation
from projects.selectors import resolve_project
from projects.services import create_api_key, set_membership

PASSWORD = "correct horse battery staple"


def add_generation(prompt="What is 2+2?", completion="4", project=None, **kwargs):
    """A generation in `project` (None: the default project)."""
    generation, _ = create_generation(GenerationInput(prompt=prompt, completion=completion, **kwargs), project)
    return generation


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


def add_labelled_examples(n_desirable: int, n_undesirable: int, prefix: str = "q") -> None:
    """n_D + n_U items, each on its own prompt, each with one end-user vote of its label."""
    from feedback.models import Generation, Vote

    for index in range(n_desirable + n_undesirable):
        generation = add_generation(prompt=f"{prefix}{index}", completion=f"answer {index}")
        Vote.objects.create(generation=generation, external_user_id="rater", desirable=index < n_desirable)
    assert Generation.objects.count() >= n_desirable + n_undesirable


def make_annotator(username: str, project=None, role: str = "annotator"):
    """A user with a role in a project (None: the default project)."""
    user = get_user_model().objects.create_user(username, password=PASSWORD)
    set_membership(resolve_project(project), user, role)
    return user


ALL_SCOPES = "generations:write,votes:write,generate,import,read"
PRODUCT_SCOPES = "generations:write,votes:write,generate,read"


def key_client(project=None, scopes: str = PRODUCT_SCOPES, **options):
    """A DRF test client sending a fresh API key of the project (None: the default project)."""
    from rest_framework.test import APIClient

    client = APIClient()
    api_client, key = create_api_key(resolve_project(project), scopes=scopes, **options)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    client.api_client, client.key = api_client, key
    return client


# --- Blind comparisons ----------------------------------------------------------------------


def add_version(name: str, project=None, **fields):
    """A model version row (never loaded: the comparison pages and judge only read its outputs)."""
    from training.models import ModelVersion

    fields.setdefault("artifact_path", f"/m/{name}")
    return ModelVersion.objects.create(project=resolve_project(project), name=name, base_model="/m", **fields)


def add_heldout_outputs(version, outputs: dict) -> None:
    """The gate's stored greedy outputs of a version: {prompt: completion}."""
    from feedback.content import prompt_sha256
    from training.models import HeldoutOutput

    HeldoutOutput.objects.bulk_create(
        [
            HeldoutOutput(version=version, prompt=prompt, prompt_sha256=prompt_sha256(prompt), completion=completion)
            for prompt, completion in outputs.items()
        ]
    )


def answer(item, annotator, choice_for_version):
    """A ComparisonVote choosing the side of `choice_for_version` (a version) or "tie"."""
    from feedback.models import ComparisonVote

    if choice_for_version == "tie":
        choice = "tie"
    else:
        choice = "left" if item.left_output.version_id == choice_for_version.pk else "right"
    return ComparisonVote.objects.create(item=item, annotator=annotator, choice=choice)
