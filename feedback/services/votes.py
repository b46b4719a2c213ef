"""Recording a vote. One vote per (generation, voter): a repeated submission changes nothing.

record_vote is the one function that writes single votes: the API, the annotation pages (through
services.queue) and the simulated annotators all come here. (Bulk imports write their rows in
batches: services.imports.)
"""

from __future__ import annotations

import functools

from django.db import IntegrityError, connection, transaction

from feedback.models import Generation, Vote
from feedback.sql import fetchone_prepared


class GenerationNotFound(LookupError):
    pass


# The columns an INSERT writes, straight from the model (everything but the id).
_INSERTED_FIELDS = [field for field in Vote._meta.concrete_fields if not field.primary_key]


@functools.cache
def _insert_sql() -> str:
    # One statement that either inserts the vote or, when this voter already voted on this generation
    # (either partial unique constraint), does nothing and returns no row. PostgreSQL and SQLite
    # (3.35+) both accept it; Django's ORM has no "insert or tell me it existed" in one round trip.
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _INSERTED_FIELDS)
    placeholders = ", ".join(["%s"] * len(_INSERTED_FIELDS))
    return (
        f"INSERT INTO {quote(Vote._meta.db_table)} ({columns}) VALUES ({placeholders})"
        f" ON CONFLICT DO NOTHING RETURNING {quote(Vote._meta.pk.column)}"
    )


def _insert_or_nothing(vote: Vote) -> int | None:
    """INSERT the vote's row; its new id, or None when this voter already voted on this generation."""
    params = [field.get_db_prep_save(field.pre_save(vote, True), connection) for field in _INSERTED_FIELDS]
    row = fetchone_prepared(_insert_sql(), params)
    return row[0] if row is not None else None


def record_vote(
    *,
    generation_id: int,
    desirable: bool,
    annotator_id: int | None = None,
    external_user_id: str | None = None,
    comment: str = "",
    source: str = "api",
) -> tuple[Vote, bool]:
    """Return (vote, created); the first vote of a voter on a generation wins (a repeat returns it).

    The voter is exactly one of an annotator (a user id) and an external user id (an end user of a
    product app). Raises GenerationNotFound when there is no such generation.

    Outside a transaction (a web request) this is one INSERT, which in autocommit is also its own
    commit: a missing generation shows up as the foreign-key error of that commit (Django's
    foreign keys are checked at commit time). Inside a caller's transaction that check would come
    only at the caller's commit, too late to answer "no such generation", so the generation is
    looked up first. It touches only the database (never Redis or Celery), so a vote is saved
    whenever the database is up.
    """
    if (annotator_id is None) == (external_user_id is None):
        raise ValueError("a vote has exactly one voter: an annotator or an external user id")
    if not transaction.get_autocommit() and not Generation.objects.filter(pk=generation_id).exists():
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
        vote_id = _insert_or_nothing(vote)
    except IntegrityError:
        raise GenerationNotFound(f"generation {generation_id} does not exist") from None
    if vote_id is None:
        voter = {"annotator_id": annotator_id} if annotator_id is not None else {"external_user_id": external_user_id}
        return Vote.objects.get(generation_id=generation_id, **voter), False
    vote.pk = vote_id
    vote._state.adding = False  # it is a saved row, as if it came from the database
    vote._state.db = "default"
    return vote, True
