"""Recording a vote. One vote per (generation, voter): a repeated submission changes nothing."""
from __future__ import annotations

from django.db import IntegrityError, transaction

from feedback.models import Generation, Vote


class GenerationNotFound(LookupError):
    pass


def record_vote(
    *,
    generation_id: int,
    desirable: bool,
    annotator_id: int | None = None,
    external_user_id: str | None = None,
    comment: str = "",
    source: str = "api",
) -> tuple[Vote, bool]:
    """Return (vote, created); the first vote of a voter on a generation wins.

    This is the hot path of the ingestion API: one primary-key lookup and one INSERT. The lookup
    is needed because foreign keys are checked only at commit (Django makes them deferred), which
    inside a caller's transaction would be too late to answer "no such generation".
    It touches only the database (never Redis or Celery), so a vote is saved whenever the DB is up.
    """
    if (annotator_id is None) == (external_user_id is None):
        raise ValueError("a vote has exactly one voter: an annotator or an external user id")
    if not Generation.objects.filter(pk=generation_id).exists():
        raise GenerationNotFound(f"generation {generation_id} does not exist")
    vote = Vote(
        generation_id=generation_id,
        annotator_id=annotator_id,
        external_user_id=external_user_id,
        desirable=desirable,
        comment=comment,
        source=source,
    )
    try:
        with transaction.atomic():
            vote.save(force_insert=True)
        return vote, True
    except IntegrityError:
        voter = {"annotator_id": annotator_id} if annotator_id is not None else {"external_user_id": external_user_id}
        existing = Vote.objects.filter(generation_id=generation_id, **voter).first()
        if existing is None:
            raise GenerationNotFound(f"generation {generation_id} does not exist") from None
        return existing, False
