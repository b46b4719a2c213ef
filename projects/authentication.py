"""API keys on every product endpoint: `Authorization: Api-Key <key>` (also `Bearer <key>`, the
OpenAI-style header, and `Token <key>`, the header of the earlier user tokens).

The check is one indexed query (the key's prefix, djangorestframework-api-key's lookup column)
plus a SHA-512 of the key in Python; a revoked, expired or unknown key is refused on the very next
request. `last_used_at` is written at most once a minute per key and process, so a busy key does
not turn every request into a write.
"""

from __future__ import annotations

import datetime
import functools
import json
import threading
import time
from dataclasses import dataclass

from django.db import connection
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


def caller_for_key(key: str) -> ApiCaller:
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
    if expiry is not None and expiry < timezone.now():
        raise exceptions.AuthenticationFailed("This API key has expired.")
    _note_use(client_id)
    return ApiCaller(client_id=client_id, project_id=project_id, scopes=frozenset(scopes or ()), rate=rate or "")


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
