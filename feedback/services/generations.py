"""Prompts and generations. Both are deduplicated by content hash, so writes are idempotent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import IntegrityError, transaction

from feedback.content import prompt_sha256, sha256_text, validate_completion, validate_prompt
from feedback.models import Generation, Prompt
from projects.models import Project
from projects.selectors import resolve_project


class GenerationConflict(ValueError):
    """An external id already names a different generation of the same project.

    The message names no other row's id: the caller learns only that its request conflicts."""


@dataclass(frozen=True)
class GenerationInput:
    prompt: str | list[dict]
    completion: str
    source: str = "api"
    external_id: str | None = None
    model_version_id: int | None = None
    votes_wanted: int | None = None


def get_or_create_prompt(content: str | list[dict], project: Project | str | None = None) -> tuple[Prompt, bool]:
    project = resolve_project(project)
    content = validate_prompt(content)
    sha = prompt_sha256(content)
    try:
        with transaction.atomic():
            return Prompt.objects.get_or_create(project=project, content_sha256=sha, defaults={"content": content})
    except IntegrityError:
        # Another request created the same prompt between our read and our insert.
        return Prompt.objects.get(project=project, content_sha256=sha), False


def create_generation(item: GenerationInput, project: Project | str | None = None) -> tuple[Generation, bool]:
    """Return (generation, created). The same (prompt, completion) twice in a project is one row;
    other projects' rows are never looked at (their prompts may hold personal data)."""
    project = resolve_project(project)
    with transaction.atomic():
        prompt, _ = get_or_create_prompt(item.prompt, project)
        completion = validate_completion(item.completion)
        completion_sha = sha256_text(completion)
        existing = Generation.objects.filter(prompt=prompt, completion_sha256=completion_sha).first()
        if item.external_id:
            named = Generation.objects.filter(project=project, external_id=item.external_id).first()
            if named is not None and (existing is None or named.pk != existing.pk):
                raise GenerationConflict(
                    f"external_id {item.external_id!r} already names another generation, with a different prompt or "
                    "completion"
                )
        if existing is not None:
            if item.external_id and existing.external_id is None:
                existing.external_id = item.external_id
                existing.save(update_fields=["external_id"])
            elif item.external_id and existing.external_id != item.external_id:
                raise GenerationConflict("this prompt and completion are already stored under another external_id")
            return existing, False
        generation = Generation.objects.create(
            project=project,
            prompt=prompt,
            completion=completion,
            completion_sha256=completion_sha,
            source=item.source[:200],
            external_id=item.external_id or None,
            model_version_id=item.model_version_id,
            votes_wanted=item.votes_wanted,
        )
        return generation, True


def create_generations(
    items: Iterable[GenerationInput], project: Project | str | None = None
) -> list[tuple[Generation, bool]]:
    """All or nothing: one bad item (a conflict) leaves none of the batch saved."""
    project = resolve_project(project)
    with transaction.atomic():
        return [create_generation(item, project) for item in items]
