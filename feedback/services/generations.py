"""Prompts and generations. Both are deduplicated by content hash, so writes are idempotent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction

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


def create_generation(item: GenerationInput, project: Project | str | None = None) -> tuple[Generation, bool]:
    """Return (generation, created). The same (prompt, completion) twice in a project is one row;
    other projects' rows are never looked at (their prompts may hold personal data)."""
    return create_generations([item], project)[0]


def create_generations(
    items: Iterable[GenerationInput], project: Project | str | None = None
) -> list[tuple[Generation, bool]]:
    """create_generation for each item, in order, as one batch: all or nothing (one bad item, or a
    conflict, leaves none of the batch saved).

    The answers are those of calling create_generation item after item — an item repeating an
    earlier one of the batch gets that row with created=False, and a conflict names the same
    problem — but the database sees a fixed handful of queries instead of about eight per item
    (a batch is up to 1000 items, and a product app sends them while its user waits)."""
    project = resolve_project(project)
    items = list(items)
    contents = [validate_prompt(item.prompt) for item in items]
    completions = [validate_completion(item.completion) for item in items]
    prompt_shas = [prompt_sha256(content) for content in contents]
    completion_shas = [sha256_text(completion) for completion in completions]
    with transaction.atomic():
        prompts = _prompts_by_sha(project, dict(zip(prompt_shas, contents)))
        prompt_ids = {prompt.pk for prompt in prompts.values()}
        by_content = {
            (generation.prompt_id, generation.completion_sha256): generation
            for generation in Generation.objects.filter(
                prompt_id__in=prompt_ids, completion_sha256__in=set(completion_shas)
            )
        }
        external_ids = {item.external_id for item in items if item.external_id}
        # One object per row: a row both queries found is the same object in both maps.
        read = {generation.pk: generation for generation in by_content.values()}
        by_external = {
            generation.external_id: read.get(generation.pk, generation)
            for generation in Generation.objects.filter(project=project, external_id__in=external_ids)
        }
        results, new, named_now = [], [], []
        for item, prompt_sha, completion, completion_sha in zip(items, prompt_shas, completions, completion_shas):
            key = (prompts[prompt_sha].pk, completion_sha)
            existing = by_content.get(key)
            if item.external_id:
                named = by_external.get(item.external_id)
                if named is not None and named is not existing:
                    raise GenerationConflict(
                        f"external_id {item.external_id!r} already names another generation, with a different "
                        "prompt or completion"
                    )
            if existing is not None:
                if item.external_id and existing.external_id is None:
                    existing.external_id = item.external_id
                    by_external[item.external_id] = existing
                    if existing.pk is not None:
                        named_now.append(existing)
                elif item.external_id and existing.external_id != item.external_id:
                    raise GenerationConflict("this prompt and completion are already stored under another external_id")
                results.append((existing, False))
                continue
            generation = Generation(
                project=project,
                prompt=prompts[prompt_sha],
                completion=completion,
                completion_sha256=completion_sha,
                source=item.source[:200],
                external_id=item.external_id or None,
                model_version_id=item.model_version_id,
                votes_wanted=item.votes_wanted,
            )
            by_content[key] = generation
            if generation.external_id:
                by_external[generation.external_id] = generation
            new.append(generation)
            results.append((generation, True))
        Generation.objects.bulk_create(new)
        Generation.objects.bulk_update(named_now, ["external_id"])
    return results


def _prompts_by_sha(project: Project, contents_by_sha: dict[str, str | list[dict]]) -> dict[str, Prompt]:
    """The project's prompts of these hashes, the missing ones created (one query each way, plus one
    when a concurrent request created some of them first: those are read, not duplicated)."""
    found = {
        prompt.content_sha256: prompt
        for prompt in Prompt.objects.filter(project=project, content_sha256__in=contents_by_sha)
    }
    missing = [sha for sha in contents_by_sha if sha not in found]
    if missing:
        Prompt.objects.bulk_create(
            [Prompt(project=project, content_sha256=sha, content=contents_by_sha[sha]) for sha in missing],
            ignore_conflicts=True,
        )
        found.update(
            (prompt.content_sha256, prompt)
            for prompt in Prompt.objects.filter(project=project, content_sha256__in=missing)
        )
    return found
