"""Promote, roll back and reject: one transaction each, and the database allows one active version."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from projects.selectors import default_project
from tests.training.helpers import loadable_artifact
from training import registry
from training.models import ModelVersion
from training.selectors import active_version

pytestmark = pytest.mark.django_db


@pytest.fixture
def _version(tmp_path):
    """_version(name, **fields): a version of the default project whose artifact passes the check."""

    def make(name: str, **fields) -> ModelVersion:
        artifact = loadable_artifact(tmp_path / "artifacts" / name)
        return ModelVersion.objects.create(
            project=default_project(), name=name, base_model=artifact, artifact_path=artifact, **fields
        )

    return make


def test_database_refuses_a_second_active_version(_version):
    _version("a", status=ModelVersion.Status.ACTIVE)
    with pytest.raises(IntegrityError), transaction.atomic():
        _version("b", status=ModelVersion.Status.ACTIVE)


def test_promote_retires_the_previous_active_version(_version):
    first = registry.promote(_version("first"))
    second = registry.promote(_version("second"), reason="better")

    first.refresh_from_db()
    assert (first.status, second.status) == (ModelVersion.Status.RETIRED, ModelVersion.Status.ACTIVE)
    assert second.previous_active == first and second.status_reason == "better"
    assert active_version() == second


def test_rollback_reactivates_the_version_that_was_replaced(_version):
    first = registry.promote(_version("first"))
    second = registry.promote(_version("second"))

    restored = registry.rollback()

    second.refresh_from_db()
    assert restored == first and restored.status == ModelVersion.Status.ACTIVE
    assert second.status == ModelVersion.Status.RETIRED and "rolled back" in second.status_reason
    assert ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).count() == 1


def test_rollback_without_a_previous_version_changes_nothing(_version):
    only = registry.promote(_version("only"))
    with pytest.raises(ValidationError, match="no previous version"):
        registry.rollback()
    only.refresh_from_db()
    assert only.status == ModelVersion.Status.ACTIVE


def test_reject_refuses_the_active_version_and_needs_a_reason(_version):
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
    loadable_artifact(tmp_path)
    base = registry.ensure_base_version(str(tmp_path))
    again = registry.ensure_base_version(str(tmp_path))

    assert base == again and base.status == ModelVersion.Status.ACTIVE
    assert (base.artifact_path, base.base_model, base.is_adapter) == (str(tmp_path), str(tmp_path), False)
    assert ModelVersion.objects.filter(project=default_project()).count() == 1


def test_promote_refuses_a_version_whose_files_do_not_load(tmp_path, _version):
    active = registry.promote(_version("active"))
    empty = tmp_path / "empty"
    empty.mkdir()
    garbled = loadable_artifact(tmp_path / "garbled")
    (tmp_path / "garbled" / "model.safetensors").write_bytes(b"\xff" * 16)
    bad_config = loadable_artifact(tmp_path / "bad-config")
    (tmp_path / "bad-config" / "config.json").write_text("{not json")
    for name, path, reason in (
        ("missing", tmp_path / "missing", "does not exist"),
        ("empty", empty, "holds no config.json or adapter_config.json"),
        ("garbled", garbled, "does not load"),
        ("bad-config", bad_config, "is not readable JSON"),
    ):
        version = ModelVersion.objects.create(
            project=default_project(), name=name, base_model="b", artifact_path=str(path)
        )
        with pytest.raises(ValidationError, match=f"{name} cannot be promoted: its .*{reason}"):
            registry.promote(version)
        assert ModelVersion.objects.get(pk=version.pk).status == ModelVersion.Status.CANDIDATE
    assert active_version() == active


def test_ensure_base_version_refuses_a_missing_directory(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        registry.ensure_base_version(str(tmp_path / "missing"))
    assert not ModelVersion.objects.exists()
