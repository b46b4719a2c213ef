"""The vote table's voter indexes hold no NULLs and no LIKE copy, yet still serve every lookup by
voter (a vote costs one index entry less per empty voter column on the busiest write path), and
migration 0012 gets there and back without re-creating the foreign keys."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from feedback.models import Vote

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

BEFORE = [("feedback", "0011_jobs")]
AFTER = [("feedback", "0012_vote_partial_indexes")]


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def vote_indexes() -> dict[str, dict]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Vote._meta.db_table)
    return {name: details for name, details in constraints.items() if details["index"]}


def voter_indexes() -> dict[str, list[str]]:
    return {
        name: details["columns"]
        for name, details in vote_indexes().items()
        if not details["unique"] and set(details["columns"]) & {"annotator_id", "api_client_id"}
    }


def foreign_keys() -> set[str]:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Vote._meta.db_table)
    return {name for name, details in constraints.items() if details["foreign_key"]}


def test_each_voter_column_has_one_index_without_nulls():
    assert voter_indexes() == {"vote_annotator": ["annotator_id"], "vote_api_client": ["api_client_id"]}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE indexname IN ('vote_annotator', 'vote_api_client')"
            )
            definitions = dict(cursor.fetchall())
        assert "WHERE (annotator_id IS NOT NULL)" in definitions["vote_annotator"]
        assert "WHERE ((api_client_id)::text IS NOT NULL)" in definitions["vote_api_client"] or (
            "WHERE (api_client_id IS NOT NULL)" in definitions["vote_api_client"]
        )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the planner's choice is PostgreSQL's")
def test_lookups_by_voter_use_the_partial_indexes():
    # The planner may use a partial index only when the query implies its condition; "= value"
    # does (the operator is strict), which is what deleting a user or filtering by key asks.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN SELECT id FROM feedback_vote WHERE annotator_id = 7")
        annotator_plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("EXPLAIN SELECT id FROM feedback_vote WHERE api_client_id = 'abc'")
        client_plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "vote_annotator" in annotator_plan
    assert "vote_api_client" in client_plan


def test_migration_keeps_the_foreign_keys_and_goes_back():
    keys_after = foreign_keys()
    assert len(keys_after) == 3  # generation, annotator, API client

    migrate(BEFORE)
    before = voter_indexes()
    assert "vote_annotator" not in before and "vote_api_client" not in before
    assert {"annotator_id", "api_client_id"} <= {columns[0] for columns in before.values() if len(columns) == 1}
    assert foreign_keys() == keys_after

    migrate(AFTER)
    assert voter_indexes() == {"vote_annotator": ["annotator_id"], "vote_api_client": ["api_client_id"]}
    # Dropping only indexes never touched the foreign keys: same constraint names as before.
    assert foreign_keys() == keys_after
