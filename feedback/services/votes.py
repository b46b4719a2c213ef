"""Recording a vote. One vote per (generation, voter): a repeated submission changes nothing."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

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


# The API's hot path: the same insert, done only if the caller's token is valid at this instant
# (its row exists and its user is active), in the same statement. Checking the token in a query of
# its own cost a database round trip per vote (~0.1 ms CPU each side); remembering verified
# tokens instead kept a revoked token working for a while. Here revocation takes effect on the
# next vote at no extra cost. The voter is the end user, or else the token's owner.
# PostgreSQL needs the casts to prepare it (parameters in a SELECT list have no type of their own).
_INSERT_VOTE_IF_TOKEN = (
    "INSERT INTO {vote} (generation_id, annotator_id, external_user_id, desirable, weight, comment, source, created_at)"
    " SELECT {p_bigint}, CASE WHEN {p_bool} THEN t.user_id END, {p_varchar}, {p_bool}, 1.0, {p_text}, {p_varchar}, {p_time}"
    " FROM {token} t JOIN {user} u ON u.{user_pk} = t.user_id WHERE t.key = {p_varchar} AND u.is_active"
    " ON CONFLICT DO NOTHING RETURNING id"
)
_SQL_TABLES = {
    "vote": Vote._meta.db_table, "token": Token._meta.db_table,
    "user": get_user_model()._meta.db_table, "user_pk": get_user_model()._meta.pk.column,
}
_INSERT_VOTE_IF_TOKEN_POSTGRES = _INSERT_VOTE_IF_TOKEN.format(
    **_SQL_TABLES, p_bigint="%s::bigint", p_bool="%s::boolean", p_varchar="%s::varchar", p_text="%s::text",
    p_time="%s::timestamptz",
)
_INSERT_VOTE_IF_TOKEN_OTHER = _INSERT_VOTE_IF_TOKEN.format(
    **_SQL_TABLES, p_bigint="%s", p_bool="%s", p_varchar="%s", p_text="%s", p_time="%s")


def _execute_fetchone(postgres_sql: str, other_sql: str, params: list):
    """Run one statement; on PostgreSQL as a prepared statement of this connection.

    Django's psycopg cursors bind parameters client-side, so PostgreSQL parses and plans the
    statement on every vote; prepared once per connection, that work (and psycopg's rewriting
    of the query) is gone. Errors are still Django's (wrap_database_errors), and a failed
    statement still marks the connection for Django's health check.
    """
    if connection.vendor == "postgresql":
        import psycopg  # only where the database is PostgreSQL

        connection.ensure_connection()
        with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
            cursor.execute(postgres_sql, params, prepare=True)
            return cursor.fetchone()
    with connection.cursor() as cursor:
        cursor.execute(other_sql, params)
        return cursor.fetchone()


def insert_vote_if_token_valid(
    *,
    token_key: str,
    generation_id: int,
    desirable: bool,
    external_user_id: str | None,
    comment: str = "",
    source: str = "api",
) -> int | None:
    """Insert a vote by the holder of API token TOKEN_KEY (or by their end user EXTERNAL_USER_ID)
    if that token is valid now; return the new vote's id, or None when nothing was inserted:
    the token is not valid, or this voter already voted on this generation (the first vote
    stands). The caller tells the two apart. GenerationNotFound as record_vote.
    """
    if not transaction.get_autocommit():
        # Inside a caller's transaction the generation must be looked up first (see record_vote),
        # but "no such generation" is for a valid token's holder only: check the token before.
        if not Token.objects.filter(key=token_key, user__is_active=True).exists():
            return None
        if not Generation.objects.filter(pk=generation_id).exists():
            raise GenerationNotFound(f"generation {generation_id} does not exist")
    created_at = timezone.now()
    params = [generation_id, external_user_id is None, external_user_id, desirable, comment, source,
              connection.ops.adapt_datetimefield_value(created_at), token_key]
    try:
        row = _execute_fetchone(_INSERT_VOTE_IF_TOKEN_POSTGRES, _INSERT_VOTE_IF_TOKEN_OTHER, params)
    except IntegrityError:
        raise GenerationNotFound(f"generation {generation_id} does not exist") from None
    return row[0] if row is not None else None


def standing_vote(*, generation_id: int, annotator_id: int | None = None, external_user_id: str | None = None) -> tuple[int, bool]:
    """(id, desirable) of the vote this voter cast on this generation; Vote.DoesNotExist if none."""
    return Vote.objects.filter(generation_id=generation_id, **_voter(annotator_id, external_user_id)).values_list("id", "desirable").get()


def _insert_or_nothing(generation_id, desirable, annotator_id, external_user_id, comment, source):
    """Run _INSERT_VOTE; return (new id or None when this voter already voted, created_at)."""
    if (annotator_id is None) == (external_user_id is None):
        raise ValueError("a vote has exactly one voter: an annotator or an external user id")
    if not transaction.get_autocommit() and not Generation.objects.filter(pk=generation_id).exists():
        raise GenerationNotFound(f"generation {generation_id} does not exist")
    created_at = timezone.now()
    try:
        row = _execute_fetchone(_INSERT_VOTE, _INSERT_VOTE, [
            generation_id, annotator_id, external_user_id, desirable, 1.0, comment, source,
            connection.ops.adapt_datetimefield_value(created_at)])
    except IntegrityError:
        raise GenerationNotFound(f"generation {generation_id} does not exist") from None
    return (row[0] if row is not None else None), created_at


def _voter(annotator_id, external_user_id) -> dict:
    return {"annotator_id": annotator_id} if annotator_id is not None else {"external_user_id": external_user_id}


def insert_vote(
    *,
    generation_id: int,
    desirable: bool,
    annotator_id: int | None = None,
    external_user_id: str | None = None,
    comment: str = "",
    source: str = "api",
) -> tuple[int, bool, bool]:
    """record_vote for the API's hot path: (vote id, the standing vote's desirable, created),
    without building a Vote object. A repeat returns the first vote's id and label."""
    vote_id, _ = _insert_or_nothing(generation_id, desirable, annotator_id, external_user_id, comment, source)
    if vote_id is not None:
        return vote_id, desirable, True
    vote_id, first_desirable = standing_vote(
        generation_id=generation_id, annotator_id=annotator_id, external_user_id=external_user_id)
    return vote_id, first_desirable, False


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

    Outside a transaction (a web request) this is one INSERT, which in autocommit is also its
    own commit: a missing generation shows up as the foreign-key error of that commit (Django's
    foreign keys are checked at commit time). Inside a caller's transaction that check would come
    only at the caller's commit, too late to answer "no such generation", so the generation is
    looked up first. It touches only the database (never Redis or Celery), so a vote is saved
    whenever the DB is up.
    """
    vote_id, created_at = _insert_or_nothing(generation_id, desirable, annotator_id, external_user_id, comment, source)
    if vote_id is None:
        return Vote.objects.get(generation_id=generation_id, **_voter(annotator_id, external_user_id)), False
    vote = Vote(
        id=vote_id,
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
