"""Recording a vote. One vote per (generation, voter): a repeated submission changes nothing."""
from __future__ import annotations

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from feedback.models import Generation, Vote


class GenerationNotFound(LookupError):
    pass


# One statement that either inserts the vote or, when this voter already voted on this generation
# (either partial unique constraint), does nothing and returns no row. PostgreSQL and SQLite
# (3.35+) both accept it. Django's ORM has no "insert or tell me it existed" in one round trip.
_INSERT_VOTE = (
    "INSERT INTO {table} (generation_id, annotator_id, external_user_id, desirable, weight, comment, source, created_at)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id"
).format(table=Vote._meta.db_table)


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

    This is the hot path of the ingestion API. Outside a transaction (a web request) it is one
    INSERT, which in autocommit is also its own commit: a missing generation shows up as the
    foreign-key error of that commit (Django's foreign keys are checked at commit time).
    Inside a caller's transaction that check would come only at the caller's commit, too late
    to answer "no such generation", so the generation is looked up first.
    It touches only the database (never Redis or Celery), so a vote is saved whenever the DB is up.
    """
    if (annotator_id is None) == (external_user_id is None):
        raise ValueError("a vote has exactly one voter: an annotator or an external user id")
    if not transaction.get_autocommit() and not Generation.objects.filter(pk=generation_id).exists():
        raise GenerationNotFound(f"generation {generation_id} does not exist")
    created_at = timezone.now()
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                _INSERT_VOTE,
                [generation_id, annotator_id, external_user_id, desirable, 1.0, comment, source,
                 connection.ops.adapt_datetimefield_value(created_at)],
            )
            row = cursor.fetchone()
    except IntegrityError:
        raise GenerationNotFound(f"generation {generation_id} does not exist") from None
    if row is None:
        voter = {"annotator_id": annotator_id} if annotator_id is not None else {"external_user_id": external_user_id}
        return Vote.objects.get(generation_id=generation_id, **voter), False
    vote = Vote(
        id=row[0],
        generation_id=generation_id,
        annotator_id=annotator_id,
        external_user_id=external_user_id,
        desirable=desirable,
        weight=1.0,
        comment=comment,
        source=source,
        created_at=created_at,
    )
    vote._state.adding = False  # it is a saved row, as if it came from the database
    return vote, True
