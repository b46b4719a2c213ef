"""One SQL statement, prepared once per connection on PostgreSQL: for the vote endpoint's two hot
statements (the API key check and the vote's INSERT). Here, in the bottom app, so that both the key
check (projects) and the vote (feedback) use it."""

from __future__ import annotations

import psycopg
from django.db import connection


def fetchone_prepared(sql: str, params: list):
    """Run `sql` (with %s placeholders) and return its first row, or None.

    Django's psycopg cursors bind parameters client-side, so PostgreSQL would parse and plan the
    statement on every request; prepared once per connection, that work (and psycopg's rewriting
    of the query) is gone. Errors are still Django's (wrap_database_errors), and a failed
    statement still marks the connection for Django's health check. Other databases run it as is.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchone()
