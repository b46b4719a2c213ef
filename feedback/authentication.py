"""Token authentication for the ingestion API, with a short per-process memory of valid tokens.

Product apps send a vote per end-user click with the same token; looking the token up in the
database on each of them costs a query and about a third of the endpoint's CPU. A verified token
is remembered for settings.API_TOKEN_CACHE_SECONDS, so a revoked token or a deactivated user is
refused at most that long after the change (0 turns the memory off). Unknown or invalid tokens
are never remembered: a wrong token always goes to the database and gets 401.
"""
from __future__ import annotations

import threading
import time

from django.conf import settings
from rest_framework.authentication import TokenAuthentication

# Bounded so that many distinct tokens cannot grow a worker's memory without limit.
MAX_REMEMBERED_TOKENS = 1024


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
            return remembered[1], remembered[2]
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
