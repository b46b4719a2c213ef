"""Prompts and generations. Both are deduplicated by content hash, so writes are idempotent."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from django.db import IntegrityError, transaction

from feedback.content import prompt_sha256, sha256_text, validate_completion, validate_prompt
from feedback.models import Generation, Prompt


class GenerationConflict(ValueError):
    """An external id already names a different generation."""


@dataclass(frozen=True)
class GenerationInput:
    prompt: str | list[dict]
    completion: str
    source: str = "api"
    external_id: str | None = None
    model_version_id: int | None = None
    votes_wanted: int | None = None


def get_or_create_prompt(content: str | list[dict]) -> tuple[Prompt, bool]:
    content = validate_prompt(content)
    sha = prompt_sha256(content)
    try:
        with transaction.atomic():
            return Prompt.objects.get_or_create(content_sha256=sha, defaults={"content": content})
    except IntegrityError:
        # Another request created the same prompt between our read and our insert.
        return Prompt.objects.get(content_sha256=sha), False


def create_generation(item: GenerationInput) -> tuple[Generation, bool]:
    """Return (generation, created). The same (prompt, completion) twice is one row."""
    with transaction.atomic():
        prompt, _ = get_or_create_prompt(item.prompt)
        completion = validate_completion(item.completion)
        completion_sha = sha256_text(completion)
        existing = Generation.objects.filter(prompt=prompt, completion_sha256=completion_sha).first()
        if item.external_id:
            named = Generation.objects.filter(external_id=item.external_id).first()
            if named is not None and (existing is None or named.pk != existing.pk):
                raise GenerationConflict(
                    f"external_id {item.external_id!r} already names generation {named.pk} with a different prompt or completion"
                )
        if existing is not None:
            if item.external_id and existing.external_id is None:
                existing.external_id = item.external_id
                existing.save(update_fields=["external_id"])
            elif item.external_id and existing.external_id != item.external_id:
                raise GenerationConflict(
                    f"this prompt and completion already exist as generation {existing.pk} "
                    f"with external_id {existing.external_id!r}"
                )
            return existing, False
        generation = Generation.objects.create(
            prompt=prompt,
            completion=completion,
            completion_sha256=completion_sha,
            source=item.source[:200],
            external_id=item.external_id or None,
            model_version_id=item.model_version_id,
            votes_wanted=item.votes_wanted,
        )
        return generation, True


def create_generations(items: Iterable[GenerationInput]) -> list[tuple[Generation, bool]]:
    """All or nothing: one bad item (a conflict) leaves none of the batch saved."""
    with transaction.atomic():
        return [create_generation(item) for item in items]
