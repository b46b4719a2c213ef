"""The web app's `/v1/`: the serving process's OpenAI-compatible API, forwarded as it is.

`make demo` serves the API at http://127.0.0.1:8000/v1/ as product teams expect, while the model
runs in the serving process (PROSPECT_SERVING_URL). Requests go on with their key (the serving
process authenticates it); responses come back with their status, their `X-Prospect-*` headers and,
for `stream: true`, event by event.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from training import serving_client


def _error(status: int, message: str, code: str, kind: str = "invalid_request_error", **headers) -> JsonResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JsonResponse(body, status=status, headers=headers)


@csrf_exempt  # API keys, no cookies: nothing for CSRF to protect
def forward(request, path: str):
    if request.method not in ("GET", "POST"):
        return _error(405, "Use GET or POST.", "method_not_allowed")
    try:
        body = request.body
    except RequestDataTooBig:
        return _error(413, "The request body is too large.", "request_too_large")
    try:
        response = serving_client.open_forwarded(
            request.method, f"/v1/{path}", request.META.get("QUERY_STRING", ""), dict(request.headers), body
        )
    except serving_client.ServingUnavailable as exc:
        return _error(503, str(exc), "serving_unavailable", "server_error", **{"Retry-After": "5"})
    headers = serving_client.passed_on_headers(response)
    content_type = headers.pop("content-type", None) or headers.pop("Content-Type", "application/json")
    if content_type.startswith("text/event-stream"):
        streamed = StreamingHttpResponse(
            serving_client.relay(response), status=response.status_code, content_type=content_type
        )
    else:
        try:
            streamed = HttpResponse(response.read(), status=response.status_code, content_type=content_type)
        finally:
            response.close()
    for name, value in headers.items():
        streamed[name] = value
    return streamed
