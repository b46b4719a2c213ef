"""The web side's way to the serving process: HTTP only, so a web worker never imports torch.

Web workers (granian, runserver) call the serving process (`manage.py serve_models`) at
PROSPECT_SERVING_URL for `/api/v1/generate/` (its internal endpoint, authenticated with the shared
PROSPECT_SERVING_TOKEN) and forward the OpenAI-compatible `/v1/` API to it unchanged (the caller's
API key travels with the request and the serving process checks it).

`tests/test_architecture.py` checks that nothing the web process imports reaches torch or transformers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from django.conf import settings
from django.utils.crypto import salted_hmac

# Tokens generated when a caller names no limit (the product API /api/v1/generate/, the queue).
DEFAULT_MAX_NEW_TOKENS = 32
INTERNAL_GENERATE_PATH = "/internal/v1/generate"
TOKEN_HEADER = "X-Prospect-Serving-Token"
# Response headers of the serving process that the web app passes on to its caller.
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Retry-After", "X-Accel-Buffering")
FORWARDED_RESPONSE_PREFIX = "x-prospect-"
# Request headers passed on to the serving process (the key, the body's type, the OpenAI SDK's own).
FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "openai-organization", "openai-project")


class ServingUnavailable(RuntimeError):
    """The serving process did not answer (not started, restarting, or overloaded)."""


@dataclass
class ServingError(RuntimeError):
    """The serving process answered with an error status; `detail` is its message."""

    status: int
    detail: str

    def __str__(self) -> str:
        return self.detail


def serving_token() -> str:
    """The shared secret of internal calls: PROSPECT_SERVING_TOKEN, else derived from SECRET_KEY
    (which every process of one installation already shares)."""
    return settings.PROSPECT_SERVING_TOKEN or salted_hmac("prospect.serving", "internal-token").hexdigest()


# Tests may route requests to the serving app inside the test process (see tests/conftest.py).
_transport: httpx.BaseTransport | None = None
_client: httpx.Client | None = None
_client_lock = threading.Lock()


def set_transport(transport: httpx.BaseTransport | None) -> None:
    """Send requests through `transport` instead of the network (None: back to the network)."""
    global _transport, _client
    with _client_lock:
        _transport, _client = transport, None


def client() -> httpx.Client:
    """One pooled client per process (httpx clients are thread-safe), kept-alive connections."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(
                base_url=settings.PROSPECT_SERVING_URL,
                transport=_transport,
                timeout=httpx.Timeout(settings.PROSPECT_SERVING_TIMEOUT_SECONDS, connect=5.0),
            )
        return _client


def generate(
    *,
    project_id: int,
    prompt,
    max_new_tokens: int,
    temperature: float,
    source: str = "api",
    routing_key: str | None = None,
) -> dict:
    """One completion stored as a generation by the serving process:
    {generation_id, completion, model_version, model_version_id}."""
    payload = {
        "project_id": project_id,
        "prompt": prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "source": source,
        "routing_key": routing_key,
    }
    try:
        response = client().post(INTERNAL_GENERATE_PATH, json=payload, headers={TOKEN_HEADER: serving_token()})
    except httpx.TransportError as exc:
        raise ServingUnavailable(_unreachable(exc)) from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text[:500]
        raise ServingError(response.status_code, str(detail))
    return response.json()


def open_forwarded(method: str, path: str, query: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    """Send a /v1/ request on to the serving process; the response is open (read or iterate it,
    then close it)."""
    forwarded = {name: value for name, value in headers.items() if name.lower() in FORWARDED_REQUEST_HEADERS}
    url = httpx.URL(path, query=query.encode()) if query else path
    request = client().build_request(method, url, headers=forwarded, content=body)
    try:
        return client().send(request, stream=True)
    except httpx.TransportError as exc:
        raise ServingUnavailable(_unreachable(exc)) from exc


def relay(response: httpx.Response) -> Iterator[bytes]:
    """The body of a streamed response as it arrives (server-sent events keep their framing)."""
    try:
        yield from response.iter_raw()
    finally:
        response.close()


def passed_on_headers(response: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower() in {h.lower() for h in FORWARDED_RESPONSE_HEADERS}
        or name.lower().startswith(FORWARDED_RESPONSE_PREFIX)
    }


def check() -> str | None:
    """None if the serving process answers its /healthz, else why not (for /readyz)."""
    try:
        response = client().get("/healthz", timeout=2.0)
    except httpx.TransportError as exc:
        return _unreachable(exc)
    return None if response.status_code == 200 else f"the serving process answered {response.status_code}"


def _unreachable(exc: Exception) -> str:
    return (
        f"the serving process at {settings.PROSPECT_SERVING_URL} is not answering ({type(exc).__name__}); "
        "start it with `python manage.py serve_models`"
    )
