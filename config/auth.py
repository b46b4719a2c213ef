"""Login lockout: django-axes, on every login that comes through a web request."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LockoutBackend(AxesStandaloneBackend):
    """django-axes' check, skipped when there is no request to attribute the attempt to.

    Only web requests can be used to guess passwords; a login without a request (Django's test
    client, a management command) has no address to lock out, and axes would refuse it outright.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)
