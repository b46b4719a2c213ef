"""Brute force on the login page: a lockout after repeated failures (django-axes), lifted by the
cool-off or an administrator, and per account: others still log in."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.utils import timezone

from tests.feedback.helpers import PASSWORD, make_annotator

pytestmark = pytest.mark.django_db
LOGIN = "/accounts/login/"


def log_in(client, username, password):
    return client.post(LOGIN, {"username": username, "password": password})


def test_many_wrong_passwords_lock_the_account_even_for_the_right_one(client, settings):
    settings.AXES_FAILURE_LIMIT = 5
    make_annotator("alice")
    make_annotator("bob")
    for _ in range(4):
        assert log_in(client, "alice", "wrong guess").status_code == 200  # the form again, with its error
    assert log_in(client, "alice", "wrong guess").status_code == 429  # the fifth failure locks
    locked = log_in(client, "alice", PASSWORD)
    assert locked.status_code == 429
    assert b"Too many failed logins" in locked.content
    assert "_auth_user_id" not in client.session
    # Another account from the same address is not locked.
    assert log_in(client, "bob", PASSWORD).status_code == 302


def test_the_lockout_ends_after_the_cool_off_or_when_an_administrator_lifts_it(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_annotator("alice")
    for _ in range(3):
        log_in(client, "alice", "wrong guess")
    assert log_in(client, "alice", PASSWORD).status_code == 429
    # The cool-off (PROSPECT_LOGIN_COOLOFF_HOURS) has passed.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(hours=1))
    assert log_in(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(3):
        log_in(client, "alice", "wrong guess")
    assert log_in(client, "alice", PASSWORD).status_code == 429
    call_command("axes_reset")
    assert log_in(client, "alice", PASSWORD).status_code == 302


def test_a_success_before_the_limit_resets_the_count(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    make_annotator("alice")
    for _ in range(2):
        log_in(client, "alice", "wrong guess")
    assert log_in(client, "alice", PASSWORD).status_code == 302
    client.logout()
    for _ in range(2):
        log_in(client, "alice", "wrong guess")
    assert log_in(client, "alice", PASSWORD).status_code == 302
