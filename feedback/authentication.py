"""Token authentication for the ingestion API. A revoked token or a deactivated user is refused on
the very next request, on every endpoint.

One rule everywhere: a token is valid while its row exists and its user is active.
- `CachedTokenAuthentication` (the DRF endpoints) remembers the (user, token) objects built by
  DRF's ORM lookup for settings.API_TOKEN_CACHE_SECONDS, but re-checks every remembered token with
  one cheap indexed query (also the user's staff flags) before trusting it: the memory only saves
  building the objects, it never extends a token's life. Invalid tokens are never remembered.
- `VoterTokenAuthentication` (the vote endpoint, one request per end-user click) needs only the
  caller's id: that same one query, and a `TokenVoter` instead of a User object.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from feedback.sql import fetchone_prepared

# Bounded so that many distinct tokens cannot grow a worker's memory without limit.
MAX_REMEMBERED_TOKENS = 1024

# DRF's own answers, so that both ways in say the same thing.
INVALID_TOKEN = "Invalid token."
INACTIVE_USER = "User inactive or deleted."

_User = get_user_model()
_TOKEN_USER = (
    f"SELECT u.{_User._meta.pk.column}, u.is_active, u.is_staff, u.is_superuser FROM {Token._meta.db_table} t JOIN {_User._meta.db_table} u ON u.{_User._meta.pk.column} = t.user_id"
    " WHERE t.key = %s"
)


def _token_user_row(key: str) -> tuple | None:
    return fetchone_prepared(_TOKEN_USER, [key])


def token_voter_id(key: str) -> int:
    """The id of the active user owning token KEY; AuthenticationFailed (DRF's messages) if none."""
    row = _token_user_row(key)
    if row is None:
        raise exceptions.AuthenticationFailed(INVALID_TOKEN)
    if not row[1]:
        raise exceptions.AuthenticationFailed(INACTIVE_USER)
    return row[0]


@dataclass(frozen=True)
class TokenVoter:
    """The caller of the vote endpoint as far as a vote needs it: an active user's id.

    Stands in for request.user (DRF's IsAuthenticated reads is_authenticated), without loading
    the User row.
    """

    pk: int
    is_active = True
    is_authenticated = True
    is_anonymous = False

    @property
    def id(self) -> int:
        return self.pk


class CachedTokenAuthentication(TokenAuthentication):
    _remembered: dict[str, tuple[float, object, object]] = {}
    _lock = threading.Lock()

    def authenticate_credentials(self, key):
        ttl = settings.API_TOKEN_CACHE_SECONDS
        if ttl <= 0:
            return super().authenticate_credentials(key)
        now = time.monotonic()
        remembered = self._remembered.get(key)
        if remembered is not None and remembered[0] > now:
            user = remembered[1]
            # Still this user's token, still active, same privileges: else forget and ask DRF,
            # which gives the exact refusal (or fresh objects when only the flags changed).
            if _token_user_row(key) == (user.pk, True, user.is_staff, user.is_superuser):
                return user, remembered[2]
            with self._lock:
                self._remembered.pop(key, None)
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed when invalid
        with self._lock:
            if len(self._remembered) >= MAX_REMEMBERED_TOKENS:
                self._remembered.clear()
            self._remembered[key] = (now + ttl, user, token)
        return user, token

    @classmethod
    def forget_all(cls) -> None:
        with cls._lock:
            cls._remembered.clear()


class VoterTokenAuthentication(CachedTokenAuthentication):
    """`Authorization: Token <key>` → (TokenVoter, key) with one indexed query; DRF's header parsing
    and messages. A subclass of the API's token authentication so the schema documents it as such."""

    def authenticate_credentials(self, key):
        return TokenVoter(token_voter_id(key)), key
