"""The serving process's HTTP API (training/serving_urls.py): the OpenAI-compatible endpoints that
product teams call, and the internal generate call of the web app.

OpenAI-compatible: `POST /v1/chat/completions`, `POST /v1/completions` (both with `stream: true`
as server-sent events), `GET /v1/models`. The `model` is the project's name (or slug); the key is
one of the project's API keys with the `generate` scope, sent as `Authorization: Bearer <key>` (the
OpenAI SDK's header). The OpenAI `user` field routes the request (training.routing: a canary keeps
one end user on one version). Every completion is stored as a Generation with the version that
produced it; the response names it so the product can send the end user's thumbs to
`POST /api/v1/votes/`:

- non-streamed: the extra fields `prospect_generation_id`, `prospect_model_version`,
  `prospect_model_version_id` on the response (and `prospect_generation_id` on each choice), and the
  headers `X-Prospect-Generation-Id` and `X-Prospect-Model-Version`;
- streamed: the same extra fields on the final chunk (the one carrying `finish_reason`), since the
  generation is stored once the completion is complete; `X-Prospect-Model-Version` as a header.

An empty completion cannot be rated, so it is returned but not stored (`prospect_generation_id`
null). Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import AuthenticationFailed

from feedback.content import ContentError, validate_prompt
from projects.authentication import ApiCaller, caller_for_key
from projects.models import Project
from training.models import ModelVersion
from training.routing import NoActiveModelVersion, version_for_request
from training.serving import (
    DEFAULT_MAX_NEW_TOKENS,
    BackendUnavailable,
    EmptyCompletion,
    get_backend,
    serve_product_request,
    store_completions,
)
from training.serving_client import TOKEN_HEADER, serving_token

GENERATION_ID_HEADER = "X-Prospect-Generation-Id"
MODEL_VERSION_HEADER = "X-Prospect-Model-Version"
# max_tokens when the request gives none, and the most a request may ask for.
DEFAULT_MAX_TOKENS = 256
MAX_TOKENS_LIMIT = 1024
# OpenAI parameters Prospect cannot honour: refused (400) rather than silently ignored, unless the
# request sends their neutral value.
UNSUPPORTED_UNLESS = {
    "n": (None, 1),
    "best_of": (None, 1),
    "top_p": (None, 1, 1.0),
    "stop": (None, [], ""),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def response(self) -> JsonResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        response = JsonResponse(body, status=self.status)
        if self.status == 503:
            response["Retry-After"] = "5"
        return response


def openai_errors(view):
    """Every failure of the wrapped view answers in OpenAI's error shape."""

    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ApiError as exc:
            return exc.response()
        except BackendUnavailable as exc:
            return ApiError(503, str(exc), type="server_error", code="backend_unavailable").response()

    wrapped.__name__ = wrapped.__qualname__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return csrf_exempt(wrapped)


# --- request parsing -----------------------------------------------------------------------------
def _authenticate(request) -> ApiCaller:
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() not in ("bearer", "api-key"):
        raise ApiError(
            401, "Give one of the project's API keys as `Authorization: Bearer <key>`.", code="invalid_api_key"
        )
    try:
        caller = caller_for_key(parts[1])
    except AuthenticationFailed as exc:
        raise ApiError(401, str(exc.detail), code="invalid_api_key") from None
    if not caller.has_scope("generate"):
        raise ApiError(
            403, "This API key lacks the 'generate' scope.", type="permission_error", code="insufficient_scope"
        )
    return caller


def _json_body(request) -> dict:
    try:
        body = request.body
    except RequestDataTooBig:
        raise ApiError(413, "The request body is too large.", code="request_too_large") from None
    try:
        payload = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return payload


def _project(caller: ApiCaller, model) -> Project:
    project = Project.objects.get(pk=caller.project_id)
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required: the name of the project.", param="model")
    if model not in (project.name, project.slug):
        raise ApiError(
            404,
            f"The model {model!r} does not exist or this API key cannot use it; its model is {project.name!r}.",
            param="model",
            code="model_not_found",
        )
    return project


@dataclass
class Options:
    max_tokens: int
    temperature: float
    seed: int | None
    stream: bool
    routing_key: str | None


def _number(payload: dict, name: str, kind: type, low, high, default):
    value = payload.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ApiError(400, f"`{name}` must be a {'number' if kind is float else 'integer'}.", param=name)
    if not low <= value <= high:
        raise ApiError(400, f"`{name}` must be between {low} and {high} (got {value}).", param=name)
    return kind(value)


def _options(payload: dict) -> Options:
    for name, neutral in UNSUPPORTED_UNLESS.items():
        if name in payload and payload[name] not in neutral:
            raise ApiError(400, f"`{name}` is not supported by Prospect's serving.", param=name, code="unsupported")
    max_tokens = payload.get("max_completion_tokens")
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    max_tokens = _number(payload, name, int, 1, MAX_TOKENS_LIMIT, DEFAULT_MAX_TOKENS)
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "`stream` must be true or false.", param="stream")
    # OpenAI's end-user identifier; the newer SDKs call it safety_identifier.
    user = payload.get("user") or payload.get("safety_identifier")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise ApiError(400, "`user` must be a string of at most 256 characters.", param="user")
    return Options(
        max_tokens=max_tokens,
        temperature=_number(payload, "temperature", float, 0.0, 2.0, 1.0),
        seed=_number(payload, "seed", int, -(2**63), 2**63 - 1, None),
        stream=stream,
        routing_key=user or None,
    )


def _chat_prompt(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list of {role, content}.", param="messages")
    prompt = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"`messages[{index}]` must be an object.", param=f"messages[{index}]")
        role = "system" if message.get("role") == "developer" else message.get("role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(part, dict) and part.get("type") == "text" for part in content):
                raise ApiError(
                    400,
                    "Only text content parts are supported.",
                    param=f"messages[{index}].content",
                    code="unsupported",
                )
            content = "".join(str(part.get("text", "")) for part in content)
        prompt.append({"role": role, "content": content})
    try:
        return validate_prompt(prompt, field="messages")
    except ContentError as exc:
        raise ApiError(400, str(exc), param=exc.field) from None


def _text_prompts(prompt) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(400, "`prompt` must be a string or a non-empty list of strings.", param="prompt")
    for index, text in enumerate(prompts):
        try:
            validate_prompt(text, field=f"prompt[{index}]" if len(prompts) > 1 else "prompt")
        except ContentError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
    return prompts


# --- answering -----------------------------------------------------------------------------------
def _route(project: Project, options: Options) -> ModelVersion:
    try:
        return version_for_request(project, routing_key=options.routing_key)
    except NoActiveModelVersion as exc:
        raise ApiError(503, str(exc), type="server_error", code="no_active_version") from None


def _finish_reason(backend, version: ModelVersion, completion: str, max_tokens: int) -> str:
    count = backend.count_tokens(version, completion)
    return "length" if count is not None and count >= max_tokens else "stop"


def _stored(project, version, prompts, completions, routing_key: str | None) -> list[int | None]:
    """Each completion's generation id (None for an empty one, which cannot be rated), recorded as
    served to `routing_key`'s end user (a canary credits their thumbs to the version they saw).

    One store_completions call for the whole batch: one transaction and one insert of the served
    records, however many prompts the request sent."""
    stored = iter(
        store_completions(
            project,
            version,
            prompts,
            completions,
            source="openai",
            skip_empty=True,
            routing_key=routing_key,
            record_served=True,
        )
    )
    # skip_empty leaves the empty completions out and keeps the others in order (the same test as
    # store_completions'): each non-empty completion takes the next generation.
    return [next(stored).pk if completion.strip() else None for completion in completions]


def _prospect_fields(version: ModelVersion, generation_id: int | None) -> dict:
    return {
        "prospect_generation_id": generation_id,
        "prospect_model_version": version.name,
        "prospect_model_version_id": version.pk,
    }


def _with_headers(response, version: ModelVersion, generation_ids: list[int | None]):
    response[MODEL_VERSION_HEADER] = version.name
    known = [str(generation_id) for generation_id in generation_ids if generation_id is not None]
    if known:
        response[GENERATION_ID_HEADER] = ",".join(known)
    return response


def _sse(chunks: Iterator[dict]) -> Iterator[bytes]:
    try:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n".encode()
    except Exception as exc:  # mid-stream: the status line is gone, so the error is an event
        error = {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': error})}\n\n".encode()
    yield b"data: [DONE]\n\n"


def _event_stream(chunks: Iterator[dict], version: ModelVersion) -> StreamingHttpResponse:
    response = StreamingHttpResponse(_sse(chunks), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies (nginx) must not hold events back
    response[MODEL_VERSION_HEADER] = version.name
    return response


def _streamed(project, version, prompt, options, make_chunk) -> Iterator[dict]:
    """Chunks of one streamed completion: make_chunk(piece, finish_reason) per piece, then the
    final one with finish_reason and the stored generation's id."""
    backend = get_backend(project)
    pieces = []
    for piece in backend.stream(
        prompt, version=version, max_new_tokens=options.max_tokens, temperature=options.temperature, seed=options.seed
    ):
        pieces.append(piece)
        yield make_chunk(piece, None)
    completion = "".join(pieces)
    (generation_id,) = _stored(project, version, [prompt], [completion], options.routing_key)
    final = make_chunk(None, _finish_reason(backend, version, completion, options.max_tokens))
    final.update(_prospect_fields(version, generation_id))
    yield final


@openai_errors
def chat_completions(request):
    """POST /v1/chat/completions"""
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    caller = _authenticate(request)
    payload = _json_body(request)
    project = _project(caller, payload.get("model"))
    options = _options(payload)
    prompt = _chat_prompt(payload.get("messages"))
    version = _route(project, options)
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    if options.stream:

        def chunk(piece, finish_reason) -> dict:
            delta = {} if piece is None else {"content": piece}
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": project.name,
                "system_fingerprint": f"prospect-{version.name}",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }

        def chunks():
            first = chunk("", None)
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield first
            yield from _streamed(project, version, prompt, options, chunk)

        return _event_stream(chunks(), version)

    backend = get_backend(project)
    (completion,) = backend.generate(
        [prompt], version=version, max_new_tokens=options.max_tokens, temperature=options.temperature, seed=options.seed
    )
    (generation_id,) = _stored(project, version, [prompt], [completion], options.routing_key)
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": project.name,
        "system_fingerprint": f"prospect-{version.name}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion},
                "logprobs": None,
                "finish_reason": _finish_reason(backend, version, completion, options.max_tokens),
                "prospect_generation_id": generation_id,
            }
        ],
        **_prospect_fields(version, generation_id),
    }
    return _with_headers(JsonResponse(body), version, [generation_id])


@openai_errors
def completions(request):
    """POST /v1/completions"""
    if request.method != "POST":
        raise ApiError(405, "Use POST.", code="method_not_allowed")
    caller = _authenticate(request)
    payload = _json_body(request)
    project = _project(caller, payload.get("model"))
    options = _options(payload)
    prompts = _text_prompts(payload.get("prompt"))
    version = _route(project, options)
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    if options.stream:
        if len(prompts) != 1:
            raise ApiError(400, "Streaming answers one prompt at a time.", param="prompt", code="unsupported")

        def chunk(piece, finish_reason) -> dict:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": project.name,
                "system_fingerprint": f"prospect-{version.name}",
                "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish_reason}],
            }

        return _event_stream(_streamed(project, version, prompts[0], options, chunk), version)

    backend = get_backend(project)
    texts = backend.generate(
        prompts, version=version, max_new_tokens=options.max_tokens, temperature=options.temperature, seed=options.seed
    )
    generation_ids = _stored(project, version, prompts, texts, options.routing_key)
    body = {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": project.name,
        "system_fingerprint": f"prospect-{version.name}",
        "choices": [
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": _finish_reason(backend, version, text, options.max_tokens),
                "prospect_generation_id": generation_id,
            }
            for index, (text, generation_id) in enumerate(zip(texts, generation_ids))
        ],
        **_prospect_fields(version, generation_ids[0]),
    }
    return _with_headers(JsonResponse(body), version, generation_ids)


@openai_errors
def models(request):
    """GET /v1/models: the key's project, as the one model it may call."""
    if request.method != "GET":
        raise ApiError(405, "Use GET.", code="method_not_allowed")
    caller = _authenticate(request)
    project = Project.objects.get(pk=caller.project_id)
    active = ModelVersion.objects.filter(project=project, status=ModelVersion.Status.ACTIVE).first()
    entry = {
        "id": project.name,
        "object": "model",
        "created": int(project.created_at.timestamp()),
        "owned_by": "prospect",
        "prospect_model_version": active.name if active else None,
        "prospect_model_version_id": active.pk if active else None,
    }
    return JsonResponse({"object": "list", "data": [entry]})


# --- internal: the web app's /api/v1/generate/ ---------------------------------------------------
@csrf_exempt
def internal_generate(request):
    """POST /internal/v1/generate: what the web app's /api/v1/generate/ asks for, after it checked
    the caller's key. Authenticated by the installation's shared serving token."""
    given = request.headers.get(TOKEN_HEADER, "")
    if request.method != "POST" or not hmac.compare_digest(given.encode(), serving_token().encode()):
        return JsonResponse({"detail": "internal endpoint: the serving token is missing or wrong"}, status=403)
    try:
        payload = json.loads(request.body)
        project = Project.objects.get(pk=int(payload["project_id"]))
        prompt = validate_prompt(payload["prompt"])
        options = {
            "source": str(payload.get("source") or "api"),
            "max_new_tokens": int(payload.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
            "temperature": float(payload.get("temperature") or 0.0),
            "routing_key": payload.get("routing_key") or None,
        }
    except (ValueError, KeyError, TypeError, Project.DoesNotExist) as exc:
        return JsonResponse({"detail": f"bad internal request: {exc}"}, status=400)
    try:
        generation = serve_product_request(prompt, project=project, **options)
    except (NoActiveModelVersion, BackendUnavailable) as exc:
        return JsonResponse({"detail": str(exc)}, status=503)
    except EmptyCompletion as exc:
        return JsonResponse({"detail": str(exc)}, status=502)
    version = generation.served_by
    return JsonResponse(
        {
            "generation_id": generation.pk,
            "completion": generation.completion,
            "model_version": version.name,
            "model_version_id": version.pk,
        }
    )


def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


def not_found(request, exception=None):
    return ApiError(404, f"No endpoint at {request.path}.", code="not_found").response()


def server_error(request):
    return ApiError(500, "The serving process failed on this request; see its log.", type="server_error").response()
