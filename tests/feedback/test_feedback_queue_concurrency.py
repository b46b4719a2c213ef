"""Two annotators rating at the same moment, in two threads with their own database connections."""
from __future__ import annotations

import threading

import pytest
from django.db import connection

from feedback.models import Vote
from feedback.services import claim_next_generation, record_annotator_vote
from feedback_helpers import add_generation, make_annotator

pytestmark = [
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
    # The SQLite test database is in memory with a shared cache, whose table locks fail at once
    # instead of waiting out the busy timeout that a file database (the laptop default) honours.
    # CI runs this on PostgreSQL, the database for concurrent annotators.
    pytest.mark.skipif(connection.vendor == "sqlite", reason="needs a database with concurrent writers (PostgreSQL)"),
]


def test_two_annotators_at_once_never_rate_the_same_single_vote_item():
    items = {add_generation(completion=f"answer {i}").pk for i in range(30)}
    annotators = [make_annotator("alice"), make_annotator("bob")]
    served: dict[str, list[int]] = {user.username: [] for user in annotators}
    errors: list[BaseException] = []
    start = threading.Barrier(len(annotators))

    def rate_everything(user):
        try:
            start.wait()
            while (generation := claim_next_generation(user)) is not None:
                served[user.username].append(generation.pk)
                record_annotator_vote(user, generation.pk, desirable=generation.pk % 2 == 0)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=rate_everything, args=(user,)) for user in annotators]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors, errors
    everything_served = served["alice"] + served["bob"]
    assert sorted(everything_served) == sorted(items)  # each item served exactly once
    assert Vote.objects.count() == len(items)
