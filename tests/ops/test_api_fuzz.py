"""Schemathesis against /api/schema/: every operation of the API, called with a project API key
holding every scope, a bounded number of generated requests each (valid and invalid ones). No
answer may be a server error, and every answer must match what the schema says of its status.

The one 5xx the schema documents is /api/v1/generate/'s 503 while the project has no active
model version (nothing to answer with; the client retries later): it is allowed, with Retry-After
or not, because the schema says so. Any other 5xx fails the test.
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from schemathesis.checks import CheckContext, check
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.feedback.helpers import ALL_SCOPES, add_generation, key_client

EXAMPLES_PER_OPERATION = 10

schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
# Examples (the schema's own), coverage (boundary and out-of-range values of every field: huge ids,
# wrong types, missing fields) and fuzzing (EXAMPLES_PER_OPERATION generated requests, valid and not).
schema.config.phases.stateful.enabled = False


@check
def no_undocumented_server_error(ctx: CheckContext, response, case) -> bool | None:
    """No 5xx, unless the schema documents that status for this operation."""
    if response.status_code >= 500 and str(response.status_code) not in case.operation.definition.raw.get(
        "responses", {}
    ):
        raise AssertionError(f"{response.status_code} from {case.method} {case.path}: {response.text[:500]}")
    return None


@pytest.fixture
def key(db, settings, tmp_path):
    # The WSGI handler closes the database connection after each request, which would end the
    # test's transaction; Django's own test client keeps it open the same way.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    settings.DATA_DIR = tmp_path / "var"  # uploads land here
    settings.PROSPECT_API_DEFAULT_RATE = ""
    add_generation(external_id="app-1")
    yield key_client(scopes=ALL_SCOPES).key
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_request_makes_a_server_error_and_every_answer_matches_the_schema(case, key):
    case.call_and_validate(
        headers={"Authorization": f"Api-Key {key}"},
        checks=[no_undocumented_server_error, response_schema_conformance],
        excluded_checks=[],
    )
