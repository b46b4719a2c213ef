"""The vote hot path outside a transaction (as in a real web request): one INSERT, still exact."""

from __future__ import annotations

import pytest
from django.db import connection, transaction

from feedback.models import Vote
from feedback.services import GenerationNotFound, record_vote
from tests.feedback.helpers import add_generation

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_outside_a_transaction_a_vote_is_saved_once_and_a_missing_generation_is_reported():
    assert transaction.get_autocommit()
    generation = add_generation()
    vote, created = record_vote(generation_id=generation.pk, desirable=True, external_user_id="u1")
    again, created_again = record_vote(generation_id=generation.pk, desirable=False, external_user_id="u1")
    assert (created, created_again, again.pk, again.desirable) == (True, False, vote.pk, True)
    with pytest.raises(GenerationNotFound):
        record_vote(generation_id=generation.pk + 1000, desirable=True, external_user_id="u1")
    assert list(Vote.objects.values_list("external_user_id", "desirable")) == [("u1", True)]
    # The connection is still usable: nothing was left half-done.
    assert connection.is_usable() and Vote.objects.count() == 1


def test_the_api_over_autocommit(api_client):
    generation = add_generation()
    body = {"generation_id": generation.pk, "desirable": False, "external_user_id": "u"}
    assert api_client.post("/api/v1/votes/", body, format="json").status_code == 201
    assert api_client.post("/api/v1/votes/", body, format="json").status_code == 200
    assert api_client.post("/api/v1/votes/", {**body, "generation_id": 999_999}, format="json").status_code == 404
    assert Vote.objects.count() == 1
