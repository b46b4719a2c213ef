"""Who may call which endpoint: API keys by scope, signed-in users by their role in the project."""

from __future__ import annotations

from django.conf import settings
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle

from projects.authentication import ApiCaller
from projects.models import Project
from projects.selectors import ProjectRequired, has_project_perm, projects_of, resolve_project


def is_key_caller(request) -> bool:
    return isinstance(request.user, ApiCaller)


def scope_required(scope: str, *, or_project_perm: str | None = None):
    """A DRF permission: an API key carrying `scope`; with or_project_perm, also a signed-in user
    (session) holding that permission in the request's project. Without it, sessions are refused:
    the product API is for keys only."""

    class ScopeRequired(BasePermission):
        message = f"this endpoint needs an API key with the {scope!r} scope"

        def has_permission(self, request, view):
            if is_key_caller(request):
                return request.user.has_scope(scope)
            if or_project_perm is None or not request.user.is_authenticated:
                return False
            try:
                project = session_project(request)
            except ProjectRequired:
                return False
            return has_project_perm(request.user, project, or_project_perm)

    ScopeRequired.__name__ = f"ScopeRequired_{scope.replace(':', '_')}"
    return ScopeRequired


def session_project(request):
    """The project a signed-in API caller works in: ?project=NAME, else their only project, else the default."""
    name = request.query_params.get("project") if hasattr(request, "query_params") else request.GET.get("project")
    if name:
        return resolve_project(name)
    mine = projects_of(request.user)
    if len(mine) == 1:
        return mine[0]
    return resolve_project(None)


def request_project(request):
    """The project of an API request: the key's, or the session caller's (see session_project)."""
    if is_key_caller(request):
        from_key = getattr(request, "_prospect_project", None)
        if from_key is None:
            from_key = Project.objects.get(pk=request.user.project_id)
            request._prospect_project = from_key
        return from_key
    return session_project(request)


class ApiClientRateThrottle(SimpleRateThrottle):
    """Per key: the key's own rate, else PROSPECT_API_DEFAULT_RATE; no limit when both are empty.
    Refusals are 429 with Retry-After (DRF)."""

    scope = "api-client"

    def get_rate(self):
        return None  # decided per request in allow_request

    def allow_request(self, request, view):
        if not is_key_caller(request):
            return True
        rate = request.user.rate or settings.PROSPECT_API_DEFAULT_RATE
        if not rate:
            return True
        self.rate = rate
        self.num_requests, self.duration = self.parse_rate(rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": request.user.client_id}
