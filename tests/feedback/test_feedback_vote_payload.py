"""The vote endpoint's hand-written validation agrees with its documented serializer."""
from __future__ import annotations

import pytest
from rest_framework import serializers

from feedback.api import VoteInSerializer, parse_vote_payload

PAYLOADS = [
    {"generation_id": 3, "desirable": True},
    {"generation_id": 3, "desirable": False, "external_user_id": "u", "comment": "meh"},
    {"generation_external_id": "ext", "desirable": True},
    {"desirable": True},
    {"generation_id": 3, "generation_external_id": "ext", "desirable": True},
    {"generation_id": 3},
    {"generation_id": 0, "desirable": True},
    {"generation_id": "one", "desirable": True},
    {"generation_id": 3, "desirable": "maybe"},
    {"generation_id": 3, "desirable": True, "external_user_id": "x" * 201},
    {"generation_id": 3, "desirable": True, "comment": "c" * 5001},
    {"generation_id": [3], "desirable": None},
]


def serializer_errors(payload) -> set[str]:
    serializer = VoteInSerializer(data=payload)
    return set() if serializer.is_valid() else set(serializer.errors)


def parser_errors(payload) -> set[str]:
    try:
        parse_vote_payload(payload)
    except serializers.ValidationError as exc:
        return set(exc.detail)
    return set()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_same_fields_rejected(payload):
    assert parser_errors(payload) == serializer_errors(payload)


def test_a_non_object_body_is_rejected():
    assert parser_errors([1, 2]) == {"non_field_errors"}
