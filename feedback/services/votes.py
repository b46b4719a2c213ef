"""Recording a vote. One vote per (generation, voter): a repeated submission changes nothing.

record_vote is the one function that writes single votes: the API, the annotation pages (through
services.queue) and the simulated annotators all come here. (Bulk imports write their rows in
batches: services.imports.)
"""

from __future__ import annotations

import functools

from django.db import IntegrityError, connection

from feedback.models import Generation, Vote
from projects.sql import fetchone_prepared


class GenerationNotFound(LookupError):
    pass


# The columns an INSERT writes, straight from the model (everything but the id).
_INSERTED_FIELDS = [field for field in Vote._meta.concrete_fields if not field.primary_key]


@functools.cache
def _insert_sql() -> str:
    # One statement that inserts the vote only if its generation belongs to the voter's project, and
    # otherwise — or when this voter already voted on this generation (any partial unique
    # constraint) — does nothing and returns no row. PostgreSQL and SQLite (3.35+) both accept it;
    # Django's ORM has no "insert or tell me it existed" in one round trip.
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in _INSERTED_FIELDS)
    if connection.vendor == "postgresql":
        # Parameters in a SELECT list have no type for PostgreSQL to infer: name each column's.
        values = ", ".join(f"CAST(%s AS {field.cast_db_type(connection)})" for field in _INSERTED_FIELDS)
    else:
        values = ", ".join(["%s"] * len(_INSERTED_FIELDS))
    generation = Generation._meta
    # The generation is found by its primary key, then its project compared. "+ 0" keeps the
    # planner off the project's index: on a table not yet analyzed (a fresh installation's first
    # minute) PostgreSQL chose it and read every generation of the project, for each vote.
    return (
        f"INSERT INTO {quote(Vote._meta.db_table)} ({columns}) SELECT {values} FROM {quote(generation.db_table)}"
        f" WHERE {quote(generation.pk.column)} = %s AND {quote(generation.get_field('project').column)} + 0 = %s"
        f" ON CONFLICT DO NOTHING RETURNING {quote(Vote._meta.pk.column)}"
    )


def _insert_or_nothing(vote: Vote, project_id: int) -> int | None:
    """INSERT the vote's row; its new id, or None when this voter already voted on this generation
    (or the generation is not in the project)."""
    params = [field.get_db_prep_save(field.pre_save(vote, True), connection) for field in _INSERTED_FIELDS]
    row = fetchone_prepared(_insert_sql(), params + [vote.generation_id, project_id])
    return row[0] if row is not None else None


def record_vote(
    *,
    generation_id: int,
    desirable: bool,
    project_id: int | None = None,
    annotator_id: int | None = None,
    api_client_id: str | None = None,
    external_user_id: str | None = None,
    comment: str = "",
    source: str = "api",
) -> tuple[Vote, bool]:
    """Return (vote, created); the first vote of a voter on a generation wins (a repeat returns it).

    The voter is an annotator (a user id), or an API client (its key) voting for itself or for one
    of its own end users (external_user_id), or — for imports — an external user id alone. A
    repeat answers with this voter's own vote, never another's. Raises GenerationNotFound when the
    generation does not exist in `project_id` (None: the generation's own project, for internal
    callers) — another project's generation is answered exactly like a missing one.

    One INSERT … SELECT that inserts only when the generation is in the project, and in autocommit
    (a web request) is also its own commit. It touches only the database (never Redis or Celery),
    so a vote is saved whenever the database is up.
    """
    if (annotator_id is None) == (api_client_id is None and external_user_id is None):
        raise ValueError("a vote has exactly one voter: an annotator, or an API client / external user id")
    if project_id is None:
        project_id = Generation.objects.filter(pk=generation_id).values_list("project_id", flat=True).first()
        if project_id is None:
            raise GenerationNotFound(f"generation {generation_id} does not exist")
    vote = Vote(
        generation_id=generation_id,
        annotator_id=annotator_id,
        api_client_id=api_client_id,
        external_user_id=external_user_id,
        desirable=desirable,
        comment=comment,
        source=source,
    )
    try:
        vote_id = _insert_or_nothing(vote, project_id)
    except IntegrityError:
        raise GenerationNotFound(f"generation {generation_id} does not exist") from None
    if vote_id is None:
        voter = (
            {"annotator_id": annotator_id}
            if annotator_id is not None
            else {"api_client_id": api_client_id, "external_user_id": external_user_id}
        )
        existing = Vote.objects.filter(generation_id=generation_id, generation__project_id=project_id, **voter).first()
        if existing is None:
            raise GenerationNotFound(f"generation {generation_id} does not exist")
        return existing, False
    vote.pk = vote_id
    vote._state.adding = False  # it is a saved row, as if it came from the database
    vote._state.db = "default"
    return vote, True
