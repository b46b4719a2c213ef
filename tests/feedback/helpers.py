"""Small builders shared by the feedback tests."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from feedback.selectors import ANNOTATORS_GROUP
from feedback.services.generations import GenerationInput, create_generation

PASSWORD = "correct horse battery staple"


def add_generation(prompt="What is 2+2?", completion="4", **kwargs):
    generation, _ = create_generation(GenerationInput(prompt=prompt, completion=completion, **kwargs))
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


def make_annotator(username: str):
    user = get_user_model().objects.create_user(username, password=PASSWORD)
    # get_or_create: the transactional_db flush of live-server tests also empties the group table.
    user.groups.add(Group.objects.get_or_create(name=ANNOTATORS_GROUP)[0])
    return user
