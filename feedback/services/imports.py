"""Importing a JSONL feedback file: all or nothing, idempotent when the same file comes twice."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db import transaction

from feedback.content import prompt_sha256, sha256_text
from feedback.importers import ImportExample, ParseStats, SkippedLine, parse_examples
from feedback.models import Generation, ImportBatch, Prompt, Vote
from projects.models import Project
from projects.selectors import resolve_project

# Rows written per round trip; bounds memory on large files while keeping the import fast.
CHUNK_SIZE = 1000


def _file_sha256(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    stream.seek(0)
    while block := stream.read(1 << 20):
        digest.update(block)
    stream.seek(0)
    return digest.hexdigest()


def _chunks(examples: Iterable[ImportExample], size: int) -> Iterator[list[ImportExample]]:
    iterator = iter(examples)
    while chunk := list(islice(iterator, size)):
        yield chunk


def import_feedback(
    stream: BinaryIO,
    *,
    filename: str,
    fmt: str = "auto",
    threshold: float | None = None,
    weight_by_distance: bool = False,
    one_y_per_x: bool = False,
    on_invalid: str = "fail",
    user=None,
    project: Project | str | None = None,
    api_client_id: str | None = None,
    on_progress: Callable[[], None] | None = None,
) -> ImportBatch:
    """Parse and save a feedback file; raise feedback.importers.ImportRejected on the first bad line.

    on_invalid="skip" imports every valid line (for pairs, every valid side) instead; the batch
    counts the skipped ones and `skipped_report` is a JSONL file listing each with its reason.

    `stream` must be seekable (a file or an upload): it is hashed first, then parsed.
    Each imported example becomes one vote whose voter is `import:<file sha>:<line>[:part]`, so
    re-importing the same file finds its votes already there and adds nothing, while two lines
    rating the same (prompt, completion) stay two votes for the majority rule of snapshots.
    Everything lands in `project` (None: the default project); `api_client_id` is the key that sent
    the file, recorded on each vote. `on_progress()` is called after each chunk of rows is saved.
    """
    project = resolve_project(project)
    file_sha = _file_sha256(stream)
    stats = ParseStats()
    examples = parse_examples(
        stream,
        fmt,
        threshold=threshold,
        weight_by_distance=weight_by_distance,
        max_line_bytes=settings.IMPORT_MAX_LINE_BYTES,
        stats=stats,
        one_y_per_x=one_y_per_x,
        on_invalid=on_invalid,
    )
    counts = {"prompts": 0, "generations": 0, "votes": 0, "votes_existing": 0}
    voter_prefix = f"import:{file_sha[:16]}:"
    source = f"import:{filename}"[:200]
    with transaction.atomic():
        for chunk in _chunks(examples, CHUNK_SIZE):
            _save_chunk(chunk, source, voter_prefix, counts, project, api_client_id)
            if on_progress is not None:
                on_progress()
        batch = ImportBatch.objects.create(
            project=project,
            filename=filename[:500],
            sha256=file_sha,
            format=stats.format,
            threshold=threshold,
            n_lines=stats.n_lines,
            n_prompts_created=counts["prompts"],
            n_generations_created=counts["generations"],
            n_votes_created=counts["votes"],
            n_votes_existing=counts["votes_existing"],
            n_dropped_at_threshold=stats.n_dropped_at_threshold,
            n_skipped=len(stats.skipped),
            created_by=user if user is not None and user.is_authenticated else None,
        )
        if stats.skipped:
            batch.skipped_report = str(_write_skipped_report(batch, stats.skipped))
            batch.save(update_fields=["skipped_report"])
        return batch


def _write_skipped_report(batch: ImportBatch, skipped: list[SkippedLine]) -> Path:
    """One JSON object a line: {line, field, reason}, in file order. Written inside the import's
    transaction, so a failed import leaves at most an orphan file, never a batch without its report."""
    folder = Path(settings.DATA_DIR) / "imports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"import-{batch.pk}-{batch.sha256[:12]}-skipped.jsonl"
    with path.open("w", encoding="utf-8") as report:
        for item in skipped:
            report.write(json.dumps(item.as_dict(), ensure_ascii=False) + "\n")
    return path


def _save_chunk(
    chunk: list[ImportExample],
    source: str,
    voter_prefix: str,
    counts: dict,
    project: Project,
    api_client_id: str | None,
) -> None:
    # Prompts, deduplicated by content hash within the project.
    prompt_by_sha = {prompt_sha256(example.prompt): example.prompt for example in chunk}
    prompts = Prompt.objects.filter(project=project)
    prompt_ids = dict(prompts.filter(content_sha256__in=prompt_by_sha).values_list("content_sha256", "id"))
    missing = [
        Prompt(project=project, content=content, content_sha256=sha)
        for sha, content in prompt_by_sha.items()
        if sha not in prompt_ids
    ]
    if missing:
        Prompt.objects.bulk_create(missing)
        counts["prompts"] += len(missing)
        prompt_ids.update(
            prompts.filter(content_sha256__in=[p.content_sha256 for p in missing]).values_list("content_sha256", "id")
        )

    # Generations, deduplicated by (prompt, completion hash).
    keyed = []
    for example in chunk:
        keyed.append((prompt_ids[prompt_sha256(example.prompt)], sha256_text(example.completion), example))
    wanted = {(prompt_id, completion_sha): example.completion for prompt_id, completion_sha, example in keyed}
    generation_ids = {
        (prompt_id, completion_sha): generation_id
        for generation_id, prompt_id, completion_sha in Generation.objects.filter(
            prompt_id__in={key[0] for key in wanted}, completion_sha256__in={key[1] for key in wanted}
        ).values_list("id", "prompt_id", "completion_sha256")
    }
    new_generations = [
        Generation(
            project=project, prompt_id=prompt_id, completion=completion, completion_sha256=completion_sha, source=source
        )
        for (prompt_id, completion_sha), completion in wanted.items()
        if (prompt_id, completion_sha) not in generation_ids
    ]
    if new_generations:
        Generation.objects.bulk_create(new_generations)
        counts["generations"] += len(new_generations)
        generation_ids.update(
            {
                (prompt_id, completion_sha): generation_id
                for generation_id, prompt_id, completion_sha in Generation.objects.filter(
                    prompt_id__in={g.prompt_id for g in new_generations},
                    completion_sha256__in={g.completion_sha256 for g in new_generations},
                ).values_list("id", "prompt_id", "completion_sha256")
            }
        )

    votes = [
        Vote(
            generation_id=generation_ids[(prompt_id, completion_sha)],
            api_client_id=api_client_id,
            external_user_id=f"{voter_prefix}{example.line}{':' + example.part if example.part else ''}",
            desirable=example.desirable,
            weight=example.weight,
            source="import",
        )
        for prompt_id, completion_sha, example in keyed
    ]
    already_saved = set(
        Vote.objects.filter(
            generation_id__in={vote.generation_id for vote in votes},
            api_client_id=api_client_id,
            external_user_id__in={vote.external_user_id for vote in votes},
        ).values_list("generation_id", "external_user_id")
    )
    new_votes = [vote for vote in votes if (vote.generation_id, vote.external_user_id) not in already_saved]
    # ignore_conflicts: the same file imported concurrently must not fail, just add nothing twice.
    Vote.objects.bulk_create(new_votes, ignore_conflicts=True)
    counts["votes"] += len(new_votes)
    counts["votes_existing"] += len(votes) - len(new_votes)
