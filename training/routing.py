"""Which model version answers one request of a project.

One function, so that the serving process (which answers requests) and the gate (which may send a
share of live traffic to a candidate: the canary) agree on a single rule: the project's active
version, except for the share of end users a candidate's open canary takes (ModelVersion.canary_share,
set by the canary judge while the candidate is still a candidate).
"""

from __future__ import annotations

import hashlib
import secrets

from django.db.models import Q

from projects.models import Project
from training.models import ModelVersion


class NoActiveModelVersion(RuntimeError):
    """There is nothing to serve yet: no model version has been promoted."""


def canary_bucket(canary_id: int, routing_key: str | None) -> float:
    """Where a request falls in [0, 1) for a canary: a hash of the routing key (the same end user
    always lands in the same place, so stays on one version), random without one."""
    if routing_key is None:
        return secrets.randbelow(2**32) / 2**32
    digest = hashlib.sha256(f"canary-{canary_id}:{routing_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def version_for_request(project: Project, *, routing_key: str | None = None) -> ModelVersion:
    """The version that should answer this request.

    `routing_key` identifies the caller's end user (the OpenAI API's `user`; the id the product also
    sends as external_user_id with the thumbs), so a canary keeps one end user on one version; the
    canary's id is part of the hash, so each canary draws its own end users. One query.
    """
    rows = list(
        ModelVersion.objects.filter(project=project)
        .filter(Q(status=ModelVersion.Status.ACTIVE) | Q(status=ModelVersion.Status.CANDIDATE, canary_share__gt=0))
        .order_by("pk")
    )
    active = next((row for row in rows if row.status == ModelVersion.Status.ACTIVE), None)
    if active is None:
        raise NoActiveModelVersion("no model version is active: promote one on the Models page first")
    canary = next((row for row in rows if row.status == ModelVersion.Status.CANDIDATE), None)
    if canary is not None and canary_bucket(canary.pk, routing_key) < canary.canary_share:
        return canary
    return active
