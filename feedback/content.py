"""Validation and canonical hashing of prompts and completions. Pure functions, no database.

A prompt is either a plain string or a list of chat messages `[{"role": ..., "content": ...}]`.
The same prompt must hash to the same value wherever it comes from (UI, API, any import format),
because `Prompt.content_sha256` is what makes "the same prompt imported twice" one row.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

CHAT_ROLES = ("system", "user", "assistant")


class ContentError(ValueError):
    """A value that cannot be a prompt or a completion; `field` names where it was found."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}': {message}")
        self.field = field
        self.message = message


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_sha256(prompt: str | list[dict]) -> str:
    return sha256_text(canonical_json(prompt))


def text_problem(text: str) -> str | None:
    """Why this text cannot be stored (None: it can). PostgreSQL refuses NUL in text and JSON; a
    lone surrogate (half a UTF-16 pair, which JSON's \\u escapes can carry) is not UTF-8 at all."""
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain lone surrogates (an unpaired \\ud800-\\udfff escape)"
    return None


def _check_text(text: str, field: str) -> str:
    problem = text_problem(text)
    if problem:
        raise ContentError(field, problem)
    return text


def validate_prompt(value: Any, field: str = "prompt") -> str | list[dict]:
    """Return the prompt normalised (chat messages reduced to role and content) or raise."""
    if isinstance(value, str):
        if not value.strip():
            raise ContentError(field, "must not be empty")
        return _check_text(value, field)
    if isinstance(value, list):
        if not value:
            raise ContentError(field, "must not be an empty list of messages")
        messages = []
        for index, message in enumerate(value):
            where = f"{field}[{index}]"
            if not isinstance(message, dict):
                raise ContentError(where, 'must be an object {"role": ..., "content": ...}')
            role = message.get("role")
            if role not in CHAT_ROLES:
                raise ContentError(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)} (got {role!r})")
            content = message.get("content")
            if not isinstance(content, str):
                raise ContentError(f"{where}.content", f"must be a string (got {type(content).__name__})")
            _check_text(content, f"{where}.content")
            messages.append({"role": role, "content": content})
        return messages
    raise ContentError(field, f"must be a string or a list of chat messages (got {type(value).__name__})")


def validate_completion(value: Any, field: str = "completion") -> str:
    if not isinstance(value, str):
        raise ContentError(field, f"must be a string (got {type(value).__name__})")
    if not value.strip():
        raise ContentError(field, "must not be empty")
    return _check_text(value, field)


# Anthropic HH transcripts: "\n\nHuman: ...\n\nAssistant: ...", turns separated by these markers.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_LAST_ASSISTANT = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def split_hh_transcript(transcript: Any, field: str) -> tuple[list[dict], str]:
    """Split an HH transcript into (dialogue before the last Assistant turn, that turn's text)."""
    if not isinstance(transcript, str):
        raise ContentError(field, f"must be a string transcript (got {type(transcript).__name__})")
    _check_text(transcript, field)
    cut = transcript.rfind(_HH_LAST_ASSISTANT)
    if cut < 0:
        raise ContentError(field, 'has no "\\n\\nAssistant:" turn')
    completion = transcript[cut + len(_HH_LAST_ASSISTANT) :].strip()
    if not completion:
        raise ContentError(field, "the last Assistant turn is empty")
    dialogue = transcript[:cut]
    pieces = _HH_TURN.split(dialogue)
    # pieces = [text before the first marker, role, text, role, text, ...]
    if pieces[0].strip():
        raise ContentError(field, 'must start with a "\\n\\nHuman:" turn')
    messages = [{"role": _HH_ROLES[role], "content": text.strip()} for role, text in zip(pieces[1::2], pieces[2::2])]
    if not messages or messages[0]["role"] != "user":
        raise ContentError(field, 'must start with a "\\n\\nHuman:" turn')
    return messages, completion
