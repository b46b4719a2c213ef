from __future__ import annotations

import logging
import sys
import time
from http import HTTPStatus

from django.core.exceptions import PermissionDenied
from django.core.signals import got_request_exception
from django.http import HttpResponse, JsonResponse
from django.urls import reverse

from config.edge import body_limit

logger = logging.getLogger("prospect.requests")


class StaffOnlyAdminMiddleware:
    """A signed-in non-staff user gets 403 anywhere under the Django admin.

    Django's admin would answer them with its login form instead, which reads like "wrong
    password" to an annotator and invites them to try other credentials. Anonymous visitors
    still get the admin's login form.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.admin_prefix = reverse("admin:index")

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (
            request.path.startswith(self.admin_prefix)
            and user is not None
            and user.is_authenticated
            and not user.is_staff
        ):
            raise PermissionDenied("the admin is for staff only")
        return self.get_response(request)


# Paths whose callers are programs: every error there is answered as JSON, never as an HTML page.
API_PREFIXES = ("/api/", "/v1/")
# Headers of an error response that the JSON replacement keeps (they tell the client what to do).
KEPT_ERROR_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
RETRY_AFTER_SECONDS = 30


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def json_error(status: int, detail: str, **headers) -> JsonResponse:
    return JsonResponse({"detail": detail}, status=status, headers=headers)


class ApiJsonErrorMiddleware:
    """Every error under /api/ and /v1/ has a JSON body {"detail": ...}, in DEBUG and not.

    DRF's own errors are JSON already; this catches the rest: an unmatched URL (Django's 404 page,
    in DEBUG the list of every URL), an exception (the 500 page, in DEBUG the settings and the
    request headers, a caller's token included), CSRF's 403 page and a bare 405. The original body
    is dropped, never shown.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code < 400 or not is_api_path(request.path):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        try:
            phrase = HTTPStatus(response.status_code).phrase
        except ValueError:  # a status code outside the standard list
            phrase = "Error"
        replacement = json_error(response.status_code, phrase)
        for header in KEPT_ERROR_HEADERS:
            if header in response:
                replacement[header] = response[header]
        return replacement


def _outage_errors() -> tuple[type[BaseException], ...]:
    import kombu.exceptions
    import redis.exceptions
    from django.db import InterfaceError, OperationalError

    return (
        OperationalError,
        InterfaceError,
        kombu.exceptions.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )


def _remember_exception(sender, request=None, **kwargs) -> None:
    # Django turns an exception into a 500 page where it is raised (any middleware layer), so the
    # outer middleware sees only the page; the signal, sent while handling it, says what it was.
    if request is not None:
        request.prospect_exception = sys.exc_info()[1]


got_request_exception.connect(_remember_exception, dispatch_uid="prospect-remember-exception")


class ServiceUnavailableMiddleware:
    """The database or the broker is down: 503 with Retry-After (JSON on the API), not a 500.

    An outage is not a bug of the request: the client should retry, and the log gets one warning
    line per request instead of a traceback.
    """

    def __init__(self, get_response):
        self.get_response = get_response
        self.outage_errors = _outage_errors()

    def __call__(self, request):
        response = self.get_response(request)
        exception = getattr(request, "prospect_exception", None)
        if response.status_code == 500 and isinstance(exception, self.outage_errors):
            return self.unavailable(request, exception)
        return response

    def process_exception(self, request, exception):
        if isinstance(exception, self.outage_errors):
            return self.unavailable(request, exception)
        return None

    def unavailable(self, request, exception) -> HttpResponse:
        logger.warning("503 %s %s: %s: %s", request.method, request.path, type(exception).__name__, exception)
        detail = "the service is temporarily unavailable (database or broker); retry later"
        if is_api_path(request.path):
            return json_error(503, detail, **{"Retry-After": str(RETRY_AFTER_SECONDS)})
        return HttpResponse(
            detail, status=503, content_type="text/plain", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )


class RequestMetricsMiddleware:
    """Latency of every request, by route pattern (not the raw path: ids would explode the labels)."""

    def __init__(self, get_response):
        from config import metrics

        self.get_response = get_response
        self.histogram = metrics.REQUEST_LATENCY

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        self.histogram.labels(request.method, route, str(response.status_code)).observe(time.perf_counter() - started)
        return response


class ApiBodyLimitMiddleware:
    """413 (JSON) for an API request whose declared body is over its limit, before anything reads it.

    An upload that declares no length (chunked) is capped as it streams (feedback/uploads.py)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_api_path(request.path):
            try:
                declared = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                declared = 0
            limit = body_limit(request.path)
            if declared > limit:
                return json_error(413, f"the request body ({declared} bytes) is larger than the limit of {limit} bytes")
        return self.get_response(request)


class NulInUrlMiddleware:
    """400 for a path or query string carrying a NUL character (%00): PostgreSQL refuses NUL in
    text, so the lookup it reaches (a key prefix, ?project=) would otherwise be a 500."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path or "%00" in query or "\x00" in query:
            detail = "the URL must not contain NUL (%00) characters"
            if is_api_path(request.path):
                return json_error(400, detail)
            return HttpResponse(detail, status=400, content_type="text/plain")
        return self.get_response(request)
