"""projects.authentication: the verified-key cache of a web process.

A key that passed is reused for PROSPECT_API_KEY_CACHE_SECONDS without a query. What the tests pin:
a change made elsewhere (another web process: here a QuerySet.update, which no signal reports) is
not seen until the entry runs out, and is seen right after; a change made through this process
(service, admin save, delete) is seen at once; an expiry date is checked on every request, cached
or not; a cache time of 0 asks the database every time. The cache's clock is moved by hand: no
test sleeps.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from feedback.models import Vote
from projects import authentication
from projects.models import ApiClient
from projects.services import revoke_api_key
from tests.feedback.helpers import add_generation, key_client

URL = "/api/v1/votes/"


@pytest.fixture
def clock(monkeypatch):
    """The cache's clock, standing still until a test moves it."""
    now = [1000.0]
    monkeypatch.setattr(authentication, "_clock", lambda: now[0])
    return now


@pytest.fixture
def cache_seconds(settings):
    settings.PROSPECT_API_KEY_CACHE_SECONDS = 2.0
    return 2.0


def vote(client, generation, voter):
    return client.post(
        URL, {"generation_id": generation.pk, "desirable": True, "external_user_id": voter}, format="json"
    )


@pytest.mark.django_db
def test_a_key_revoked_by_another_process_is_refused_once_the_entry_runs_out(clock, cache_seconds):
    client, generation = key_client(), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    # Another web process revokes it: nothing tells this one.
    ApiClient.objects.filter(pk=client.api_client.pk).update(revoked=True)
    clock[0] += cache_seconds / 2
    assert vote(client, generation, "u2").status_code == 201  # served from the cache: no query saw the change
    clock[0] += cache_seconds / 2
    refused = vote(client, generation, "u3")
    assert refused.status_code == 401 and refused.json() == {"detail": "This API key has been revoked."}
    assert sorted(Vote.objects.values_list("external_user_id", flat=True)) == ["u1", "u2"]


@pytest.mark.django_db
def test_a_scope_taken_away_elsewhere_is_refused_once_the_entry_runs_out(clock, cache_seconds):
    client, generation = key_client(), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    ApiClient.objects.filter(pk=client.api_client.pk).update(scopes=["read"])
    clock[0] += cache_seconds
    assert vote(client, generation, "u2").status_code == 403


@pytest.mark.django_db
def test_a_key_revoked_in_this_process_is_refused_at_once(clock, cache_seconds):
    client, generation = key_client(), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    revoke_api_key(client.api_client)
    assert vote(client, generation, "u2").status_code == 401


@pytest.mark.django_db
def test_a_key_saved_or_deleted_in_this_process_is_asked_for_again(clock, cache_seconds):
    # Saves (the admin's form, the keys page) and deletes go through the model's signals.
    client, generation = key_client(), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    stored = ApiClient.objects.get(pk=client.api_client.pk)
    stored.scopes = ["read"]
    stored.save(update_fields=["scopes"])
    assert vote(client, generation, "u2").status_code == 403

    # A key with votes cannot be deleted (they keep who cast them): one that only asked about a
    # missing generation (404: the key passed, and was cached).
    other = key_client()
    response = other.post(URL, {"generation_id": generation.pk + 1000, "desirable": True}, format="json")
    assert response.status_code == 404
    ApiClient.objects.get(pk=other.api_client.pk).delete()
    assert vote(other, generation, "u4").status_code == 401


@pytest.mark.django_db
def test_a_cached_key_is_refused_the_moment_it_expires(clock, cache_seconds, monkeypatch):
    client, generation = key_client(expires_days=1), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    later = timezone.now() + timedelta(days=1, seconds=1)
    monkeypatch.setattr(authentication.timezone, "now", lambda: later)
    refused = vote(client, generation, "u2")  # the cache's own clock has not moved: the entry is live
    assert refused.status_code == 401 and refused.json() == {"detail": "This API key has expired."}


@pytest.mark.django_db
def test_with_no_cache_time_every_request_asks_the_database(clock, settings):
    settings.PROSPECT_API_KEY_CACHE_SECONDS = 0
    client, generation = key_client(), add_generation()
    assert vote(client, generation, "u1").status_code == 201
    ApiClient.objects.filter(pk=client.api_client.pk).update(revoked=True)
    assert vote(client, generation, "u2").status_code == 401


@pytest.mark.django_db
def test_the_cache_holds_only_keys_that_passed_and_never_the_key_itself(clock, cache_seconds):
    client, generation = key_client(), add_generation()
    wrong = key_client()
    wrong.credentials(HTTP_AUTHORIZATION=f"Api-Key {client.key[:-1]}{'0' if client.key[-1] != '0' else '1'}")
    assert vote(wrong, generation, "u0").status_code == 401
    assert authentication._verified == {}
    assert vote(client, generation, "u1").status_code == 201
    assert len(authentication._verified) == 1
    assert all(client.key.encode() not in digest for digest in authentication._verified)


@pytest.mark.django_db
def test_a_request_racing_a_revoke_does_not_cache_what_it_read_before(clock, cache_seconds, monkeypatch):
    # The request reads the row (still valid), the key is revoked meanwhile in this process, and
    # only then does the request get to store what it read: it must not be kept.
    client, generation = key_client(), add_generation()
    read_row = authentication._caller_from_database

    def read_then_revoke(key):
        found = read_row(key)
        revoke_api_key(ApiClient.objects.get(pk=client.api_client.pk))
        return found

    monkeypatch.setattr(authentication, "_caller_from_database", read_then_revoke)
    assert vote(client, generation, "u1").status_code == 201  # it was valid when read
    monkeypatch.setattr(authentication, "_caller_from_database", read_row)
    assert vote(client, generation, "u2").status_code == 401
