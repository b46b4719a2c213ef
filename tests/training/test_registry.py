"""Promote, roll back and reject: one transaction each, and the database allows one active version."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from training import registry
from training.models import ModelVersion
from training.selectors import active_version
from projects.selectors import default_project

pytestmark = pytest.mark.django_db


def _version(name: str, **fields) -> ModelVersion:
    return ModelVersion.objects.create(project=default_project(), name=name, base_model="/models/base", artifact_path=f"/models/{name}", **fields)


def test_database_refuses_a_second_active_version():
    _version("a", status=ModelVersion.Status.ACTIVE)
    with pytest.raises(IntegrityError), transaction.atomic():
        _version("b", status=ModelVersion.Status.ACTIVE)


def test_promote_retires_the_previous_active_version():
    first = registry.promote(_version("first"))
    second = registry.promote(_version("second"), reason="better")

    first.refresh_from_db()
    assert (first.status, second.status) == (ModelVersion.Status.RETIRED, ModelVersion.Status.ACTIVE)
    assert second.previous_active == first and second.status_reason == "better"
    assert active_version() == second


def test_rollback_reactivates_the_version_that_was_replaced():
    first = registry.promote(_version("first"))
    second = registry.promote(_version("second"))

    restored = registry.rollback()

    second.refresh_from_db()
    assert restored == first and restored.status == ModelVersion.Status.ACTIVE
    assert second.status == ModelVersion.Status.RETIRED and "rolled back" in second.status_reason
    assert ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).count() == 1


def test_rollback_without_a_previous_version_changes_nothing():
    only = registry.promote(_version("only"))
    with pytest.raises(ValidationError, match="no previous version"):
        registry.rollback()
    only.refresh_from_db()
    assert only.status == ModelVersion.Status.ACTIVE


def test_reject_refuses_the_active_version_and_needs_a_reason():
    active = registry.promote(_version("active"))
    candidate = _version("candidate")
    with pytest.raises(ValidationError, match="active"):
        registry.reject(active, "bad")
    with pytest.raises(ValidationError):
        registry.reject(candidate, "  ")

    registry.reject(candidate, "worse on the holdout")

    candidate.refresh_from_db()
    assert candidate.status == ModelVersion.Status.REJECTED and candidate.status_reason == "worse on the holdout"


def test_ensure_base_version_creates_the_first_active_version_once(tmp_path):
    base = registry.ensure_base_version(str(tmp_path))
    again = registry.ensure_base_version(str(tmp_path))

    assert base == again and base.status == ModelVersion.Status.ACTIVE
    assert (base.artifact_path, base.base_model, base.is_adapter) == (str(tmp_path), str(tmp_path), False)
    assert ModelVersion.objects.count() == 1


def test_ensure_base_version_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        registry.ensure_base_version(str(tmp_path / "missing"))
    assert not ModelVersion.objects.exists()
