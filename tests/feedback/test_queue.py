"""The annotation queue: what an annotator is served next, and how leases keep annotators apart.

Two annotators rating at the same moment, in two threads with their own database connections.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from feedback import selectors
from feedback.models import Generation, Vote
from feedback.services import claim_next_generation, record_annotator_vote, release_claim, undo_last_vote
from feedback.services.queue import _take_lease
from tests.feedback.helpers import add_generation, make_annotator

# --- queue ----------------------------------------


@pytest.mark.django_db
def test_an_item_already_rated_is_never_served_again(annotator, settings):
    settings.VOTES_PER_ITEM = 3  # the item still needs votes from others
    generation = add_generation()
    assert claim_next_generation(annotator) == generation
    record_annotator_vote(annotator, generation.pk, desirable=True)
    assert claim_next_generation(annotator) is None


@pytest.mark.django_db
def test_items_needing_more_votes_come_first(annotator):
    single = add_generation(completion="single")
    double = add_generation(completion="double", votes_wanted=2)
    assert claim_next_generation(annotator) == double
    record_annotator_vote(annotator, double.pk, desirable=True)
    assert claim_next_generation(annotator) == single


@pytest.mark.django_db
def test_items_with_enough_votes_leave_the_queue(annotator, second_annotator):
    generation = add_generation()
    Vote.objects.create(generation=generation, external_user_id="end-user", desirable=True)
    assert claim_next_generation(annotator) is None


@pytest.mark.django_db
def test_two_annotators_at_once_get_different_items(annotator, second_annotator):
    first, second = add_generation(completion="a"), add_generation(completion="b")
    served_to_alice = claim_next_generation(annotator)
    served_to_bob = claim_next_generation(second_annotator)
    assert {served_to_alice, served_to_bob} == {first, second}
    # Bob read the queue before Alice's lease landed: his attempt to take her item must fail.
    assert _take_lease(second_annotator, served_to_alice.pk, timezone.now()) is False


@pytest.mark.django_db
def test_a_reload_shows_the_same_item(annotator):
    add_generation(completion="a"), add_generation(completion="b")
    assert claim_next_generation(annotator) == claim_next_generation(annotator)


@pytest.mark.django_db
def test_a_double_rated_item_reaches_both_annotators(annotator, second_annotator):
    generation = add_generation(votes_wanted=2)
    assert claim_next_generation(annotator) == generation
    record_annotator_vote(annotator, generation.pk, desirable=True)
    assert claim_next_generation(second_annotator) == generation
    record_annotator_vote(second_annotator, generation.pk, desirable=False)
    assert claim_next_generation(annotator) is None and claim_next_generation(second_annotator) is None


@pytest.mark.django_db
def test_an_expired_lease_frees_the_item(annotator, second_annotator):
    generation = add_generation()
    claim_next_generation(annotator)
    assert claim_next_generation(second_annotator) is None
    Generation.objects.filter(pk=generation.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert claim_next_generation(second_annotator) == generation


@pytest.mark.django_db
def test_skipped_items_come_back_only_when_nothing_else_is_left(annotator):
    first, second = add_generation(completion="a"), add_generation(completion="b")
    assert claim_next_generation(annotator) == first
    release_claim(annotator, first.pk)
    assert claim_next_generation(annotator, skipped_ids=[first.pk]) == second
    record_annotator_vote(annotator, second.pk, desirable=True)
    assert claim_next_generation(annotator, skipped_ids=[first.pk]) == first


@pytest.mark.django_db
def test_undo_removes_the_last_vote_and_serves_that_item_again(annotator):
    first, second = add_generation(completion="a"), add_generation(completion="b")
    record_annotator_vote(annotator, first.pk, desirable=True)
    record_annotator_vote(annotator, second.pk, desirable=False)
    assert undo_last_vote(annotator) == second
    assert list(Vote.objects.values_list("generation_id", "desirable")) == [(first.pk, True)]
    assert claim_next_generation(annotator) == second


@pytest.mark.django_db
def test_undo_with_no_votes_does_nothing(annotator):
    assert undo_last_vote(annotator) is None


@pytest.mark.django_db
def test_progress_counts_rated_today_and_waiting(annotator, second_annotator):
    items = [add_generation(completion=str(i)) for i in range(4)]
    record_annotator_vote(annotator, items[0].pk, desirable=True)
    claim_next_generation(second_annotator)  # held by Bob: not waiting for Alice right now
    progress = selectors.queue_progress(annotator)
    assert (progress.rated_today, progress.waiting) == (1, 2)


@pytest.mark.django_db
def test_a_repeated_vote_changes_nothing(annotator):
    generation = add_generation()
    _, created = record_annotator_vote(annotator, generation.pk, desirable=True)
    _, created_again = record_annotator_vote(annotator, generation.pk, desirable=False)
    assert (created, created_again) == (True, False)
    assert list(Vote.objects.values_list("desirable", flat=True)) == [True]


@pytest.mark.django_db
def test_a_long_queue_is_counted_up_to_a_cap(annotator, monkeypatch):
    monkeypatch.setattr(selectors, "WAITING_COUNT_CAP", 3)
    for i in range(5):
        add_generation(completion=str(i))
    progress = selectors.queue_progress(annotator)
    assert (progress.waiting, progress.waiting_capped) == (3, True)
    monkeypatch.setattr(selectors, "WAITING_COUNT_CAP", 5)
    assert selectors.queue_progress(annotator) == selectors.QueueProgress(0, 5, False)


# --- queue concurrency ----------------------------------------


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.skipif(connection.vendor == "sqlite", reason="needs a database with concurrent writers (PostgreSQL)")
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


@pytest.mark.django_db
def test_an_item_rated_between_the_queue_read_and_the_lease_is_not_served(monkeypatch):
    """The race behind two annotators rating one single-vote item: Bob reads the queue, Alice takes,
    rates and releases its first item, then Bob's lease on that item succeeds (the lease is free
    again). Bob must be given the next item, not the one already rated."""
    first, second = add_generation(completion="first"), add_generation(completion="second")
    alice, bob = make_annotator("alice"), make_annotator("bob")
    read_before_alice = selectors.queue_candidate_ids(bob, timezone.now())
    assert read_before_alice[:2] == [first.pk, second.pk]
    assert claim_next_generation(alice).pk == first.pk
    record_annotator_vote(alice, first.pk, desirable=True)
    monkeypatch.setattr(selectors, "queue_candidate_ids", lambda *args, **kwargs: read_before_alice)
    served = claim_next_generation(bob)
    assert served is not None and served.pk == second.pk
    first.refresh_from_db()
    assert first.claimed_by is None  # the lease taken by mistake went back
    assert Vote.objects.filter(generation=first).count() == 1
