"""Which model version answers one request of a project.

One function, so that the serving process (which answers requests) and the gate (which may send a
share of live traffic to a candidate: the canary) agree on a single rule. Today the rule is "the
project's active version"; a canary adds "this share of requests goes to the candidate".
"""

from __future__ import annotations

from projects.models import Project
from training.models import ModelVersion


class NoActiveModelVersion(RuntimeError):
    """There is nothing to serve yet: no model version has been promoted."""


def version_for_request(project: Project, *, routing_key: str | None = None) -> ModelVersion:
    """The version that should answer this request.

    `routing_key` identifies the caller's end user (or the request) so that a canary can keep one
    end user on one version; it is unused until a canary exists.
    """
    active = ModelVersion.objects.filter(project=project, status=ModelVersion.Status.ACTIVE).first()
    if active is None:
        raise NoActiveModelVersion("no model version is active: promote one on the Models page first")
    return active
