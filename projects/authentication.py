"""API keys on every product endpoint: `Authorization: Api-Key <key>` (also `Bearer <key>`, the
OpenAI-style header, and `Token <key>`, the header of the earlier user tokens).

The check is one indexed query (the key's prefix, djangorestframework-api-key's lookup column)
plus a SHA-512 of the key in Python. A key that passed is remembered by this process for
PROSPECT_API_KEY_CACHE_SECONDS (keyed by a SHA-256 of the presented key, never the key itself), so
a busy product app costs one query a few seconds instead of one per click. Revoking or changing a
key through the app (service, keys page, admin) forgets it in that process at once; other web
processes refuse it when their entry runs out, within that time. Expiry is checked on every
request, cached or not. `last_used_at` is written at most once a minute per key and process, so a
busy key does not turn every request into a write.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework_api_key.crypto import KeyGenerator

from projects.models import ApiClient
from projects.sql import fetchone_prepared

KEYWORDS = (b"api-key", b"bearer", b"token")
INVALID_KEY = "Invalid API key."
LAST_USED_RESOLUTION_SECONDS = 60

_key_generator = KeyGenerator()
_last_used_written: dict[str, float] = {}
_last_used_lock = threading.Lock()


@dataclass(frozen=True)
class ApiCaller:
    """request.user of a call made with an API key: the client and its project, never a User."""

    client_id: str
    project_id: int
    scopes: frozenset
    rate: str
    is_active = True
    is_authenticated = True
    is_anonymous = False
    is_superuser = False
    is_staff = False
    pk = None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class _Verified:
    caller: ApiCaller
    expiry: datetime.datetime | None
    until: float  # _clock() after which the database is asked again


# SHA-256 of a presented key → what the database said of it. Only keys that passed are kept, so
# the map holds at most one entry per live key (unknown keys always go to the database).
_verified: dict[bytes, _Verified] = {}
_verified_lock = threading.Lock()
# Bumped by every forget: a row read before a forget (a request racing a revoke) is not cached after it.
_forgets = 0
# The cache's clock; tests move it forward instead of sleeping.
_clock = time.monotonic


def forget_key(client_id: str) -> None:
    """Drop CLIENT_ID's verified key from this process: its next request asks the database."""
    global _forgets
    with _verified_lock:
        _forgets += 1
        for digest in [d for d, entry in _verified.items() if entry.caller.client_id == client_id]:
            del _verified[digest]


def forget_key_when_committed(client_id: str) -> None:
    """After a change to CLIENT_ID's row: forget it now and again once the change is committed, so
    that a request verifying the key meanwhile (still reading the old row) is not kept either."""
    forget_key(client_id)
    transaction.on_commit(functools.partial(forget_key, client_id))


def forget_changed_key(sender, instance, **_signal_kwargs) -> None:
    # Saves through a form or the admin (scopes, rate, expiry, revoked); QuerySet.update sends no
    # signal, so services.revoke_api_key calls forget_key_when_committed itself.
    forget_key_when_committed(instance.pk)


def forget_verified_keys() -> None:
    global _forgets
    with _verified_lock:
        _forgets += 1
        _verified.clear()


def _note_use(client_id: str) -> None:
    now = time.monotonic()
    with _last_used_lock:
        if now - _last_used_written.get(client_id, -LAST_USED_RESOLUTION_SECONDS) < LAST_USED_RESOLUTION_SECONDS:
            return
        _last_used_written[client_id] = now
    ApiClient.objects.filter(pk=client_id).update(last_used_at=timezone.now())


def forget_last_used() -> None:
    with _last_used_lock:
        _last_used_written.clear()


def _field(name: str):
    return ApiClient._meta.get_field(name)


@functools.cache
def _lookup_sql() -> str:
    # The key's row by its prefix (unique, indexed): the one query of every API request.
    quote = connection.ops.quote_name
    columns = ", ".join(
        quote(_field(name).column)
        for name in ("id", "hashed_key", "revoked", "expiry_date", "project", "scopes", "rate")
    )
    return f"SELECT {columns} FROM {quote(ApiClient._meta.db_table)} WHERE {quote(_field('prefix').column)} = %s"


def _check_expiry(expiry: datetime.datetime | None) -> None:
    if expiry is not None and expiry < timezone.now():
        raise exceptions.AuthenticationFailed("This API key has expired.")


def caller_for_key(key: str) -> ApiCaller:
    digest = hashlib.sha256(key.encode()).digest()
    entry = _verified.get(digest)
    if entry is not None and _clock() < entry.until:
        _check_expiry(entry.expiry)
        _note_use(entry.caller.client_id)
        return entry.caller
    forgets_before = _forgets
    caller, expiry = _caller_from_database(key)
    ttl = settings.PROSPECT_API_KEY_CACHE_SECONDS
    if ttl > 0:
        with _verified_lock:
            if _forgets == forgets_before:
                _verified[digest] = _Verified(caller, expiry, _clock() + ttl)
    return caller


def _caller_from_database(key: str) -> tuple[ApiCaller, datetime.datetime | None]:
    prefix, _, secret = key.partition(".")
    if not prefix or not secret:
        raise exceptions.AuthenticationFailed(INVALID_KEY)
    row = fetchone_prepared(_lookup_sql(), [prefix])
    if row is None or not _key_generator.verify(key, row[1]):
        raise exceptions.AuthenticationFailed(INVALID_KEY)
    client_id, _, revoked, expiry, project_id, scopes, rate = row
    # Raw SQL hands back the database's own values: on SQLite, JSON as text and a naive UTC time.
    if isinstance(scopes, str):
        scopes = json.loads(scopes)
    if expiry is not None and timezone.is_naive(expiry):
        expiry = timezone.make_aware(expiry, datetime.UTC)
    if revoked:
        raise exceptions.AuthenticationFailed("This API key has been revoked.")
    _check_expiry(expiry)
    _note_use(client_id)
    caller = ApiCaller(client_id=client_id, project_id=project_id, scopes=frozenset(scopes or ()), rate=rate or "")
    return caller, expiry


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in KEYWORDS:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Invalid API key header: give one key after the keyword.")
        try:
            key = parts[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(INVALID_KEY) from None
        caller = caller_for_key(key)
        return caller, caller

    def authenticate_header(self, request):
        return "Api-Key"
