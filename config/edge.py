"""What every API request must pass before a view sees it: the JSON body (depth, characters,
numbers), the body's size (413) and its media type (415). Errors are JSON and name the field.

PostgreSQL refuses NUL characters in text and in JSON; a lone surrogate (a half of a UTF-16
pair, which JSON's \\u escapes can carry) cannot be encoded to UTF-8 at all; a deeply nested
array exhausts the parser's recursion. Each of these was a 500 inside a view; here it is a 400
naming where it was found. DRF's CharField already refuses NUL and surrogates in plain fields;
this covers the free-form JSON ones (prompts) too, on every endpoint at once.
"""

from __future__ import annotations

import json
import math

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

from feedback.content import text_problem

# The largest id a 64-bit primary key holds: a larger one is refused at the edge (400 or 404).
MAX_DATABASE_ID = 2**63 - 1
# Deeper than any document of this API (a chat prompt is 3 levels inside the body).
MAX_JSON_DEPTH = 32


class InputRefused(APIException):
    """400 {"<field path>": ["<why>"]}: a value no field of this API may hold."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid"

    def __init__(self, field: str, message: str):
        super().__init__({field or "body": [message]})


class ErrorSerializer(serializers.Serializer):
    """{"detail": "..."}: the body of every API error but a 400's field errors."""

    detail = serializers.CharField()


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def check_json_value(value, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise InputRefused naming the first string (key or value) that cannot be stored, or a
    nesting deeper than max_depth. Iterative: the check itself cannot exhaust the stack."""
    stack = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise InputRefused(path, problem)
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise InputRefused(path, f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    child_path = f"{path}.{key}" if path else str(key)
                    problem = text_problem(key)
                    if problem:
                        raise InputRefused(path or "body", f"a key {problem}")
                    stack.append((child, child_path, depth + 1))
            else:
                stack.extend((child, f"{path}[{index}]", depth + 1) for index, child in enumerate(item))


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


class SafeJSONParser(JSONParser):
    """DRF's JSON parser, refusing what the database or the views cannot take (see above)."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
            data = json.loads(text, parse_constant=_refuse_constant)
        except RecursionError:
            raise InputRefused("body", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        check_json_value(data)
        return data


def exception_handler(exc, context):
    """DRF's handler, plus Django's "body too large" as a JSON 413 instead of a 400 page."""
    # Imported here: rest_framework.views reads the parser setting, which names this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"the request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes")
    return drf_exception_handler(exc, context)


def body_limit(path: str) -> int:
    """The largest body accepted on this path: an import's file, or a JSON document."""
    if path.rstrip("/").endswith("/imports"):
        # The file plus the form's few other fields and the multipart boundaries.
        return settings.PROSPECT_IMPORT_MAX_UPLOAD_BYTES + 64 * 1024
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


class FiniteFloatField(serializers.FloatField):
    """A float that is a number: "nan" and "inf" (accepted by float()) are refused, as JSON does."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            self.fail("invalid")
        return value


def database_id_field(**kwargs) -> serializers.IntegerField:
    """An id: 1 up to the largest the database holds."""
    return serializers.IntegerField(min_value=1, max_value=MAX_DATABASE_ID, **kwargs)


# Every API error is JSON (config.middleware.ApiJsonErrorMiddleware, DRF): say so in the schema.
ERROR_STATUSES = {
    "400": "Invalid input: {field: [messages]} naming each field (nested: its path), or {detail}",
    "401": "No API key, or one that is unknown, revoked or expired",
    "403": "The key lacks the scope (or the session the role) this endpoint needs",
    "404": "No such item in this project",
    "413": "The body is larger than the limit",
    "415": "The body is not in a media type this endpoint reads",
    "429": "The key's rate limit was reached (Retry-After says when to try again)",
}


def add_error_responses(result, generator, request, public):
    """drf-spectacular postprocessing hook: the error answers of every /api/ operation."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = {
        "type": "object",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    }
    schemas["ValidationError"] = {
        "type": "object",
        "description": "Each invalid field with its messages, or a `detail` for the whole request.",
        "additionalProperties": True,
    }
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, description in ERROR_STATUSES.items():
                name = "ValidationError" if code == "400" else "Error"
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                    },
                )
    return result
