"""The model registry: versions, which one is active, promote / roll back / reject.

Every state change of a ModelVersion goes through here (or through training.gate, which calls
promote), inside a transaction; the partial unique constraint `one_active_model_version` makes
"exactly one active" the database's rule, not this module's.

Public API (views, commands and the layers above call these; the signatures are a contract):
    promote(version, *, reason="")    -> ModelVersion
    rollback()                        -> ModelVersion
    reject(version, reason)           -> None
    ensure_base_version(base_model_path, *, name="base") -> ModelVersion
    create_candidate_version(run, *, artifact_path, is_adapter, trained_from) -> ModelVersion
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from training.models import ModelVersion, TrainingRun


def promote(version: ModelVersion, *, reason: str = "") -> ModelVersion:
    """Make `version` the active one, retiring the current active version, in one transaction.

    The partial unique constraint `one_active_model_version` guarantees that two concurrent
    promotions cannot both succeed. Promoting the already active version is a no-op.
    """
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == ModelVersion.Status.ACTIVE:
            return version
        current = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
        now = timezone.now()
        if current is not None:
            current.status = ModelVersion.Status.RETIRED
            current.status_reason = f"replaced by {version.name}"
            current.save(update_fields=["status", "status_reason"])
        version.status = ModelVersion.Status.ACTIVE
        version.status_reason = reason or "promoted"
        version.activated_at = now
        version.previous_active = current
        version.save(update_fields=["status", "status_reason", "activated_at", "previous_active"])
    return version


def rollback() -> ModelVersion:
    """Re-activate the version the active one replaced (else its parent), in one transaction.

    The rolled-back version becomes retired, its reason naming the version that replaced it.
    Raises ValidationError when nothing is active or there is nothing to roll back to.
    """
    with transaction.atomic():
        current = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
        if current is None:
            raise ValidationError("no model version is active; nothing to roll back")
        # A version an admin rejected since is never brought back by a rollback.
        candidates = [
            v
            for v in (current.previous_active, current.parent)
            if v is not None and v.status != ModelVersion.Status.REJECTED
        ]
        if not candidates:
            raise ValidationError(f"{current.name} has no previous version to roll back to")
        target = candidates[0]
        target = ModelVersion.objects.select_for_update().get(pk=target.pk)
        current.status = ModelVersion.Status.RETIRED
        current.status_reason = f"rolled back to {target.name}"
        current.save(update_fields=["status", "status_reason"])
        target.status = ModelVersion.Status.ACTIVE
        target.status_reason = f"re-activated by rolling back {current.name}"
        target.activated_at = timezone.now()
        target.save(update_fields=["status", "status_reason", "activated_at"])
    return target


def reject(version: ModelVersion, reason: str) -> None:
    """Mark a candidate or retired version rejected with a reason. The active one must be rolled back first."""
    if not (reason or "").strip():
        raise ValidationError({"reason": "say why the version is rejected"})
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == ModelVersion.Status.ACTIVE:
            raise ValidationError(f"{version.name} is active: roll back or promote another version first")
        version.status = ModelVersion.Status.REJECTED
        version.status_reason = reason.strip()
        version.save(update_fields=["status", "status_reason"])


def ensure_base_version(base_model_path: str, *, name: str = "base") -> ModelVersion:
    """The active version, creating and activating one from `base_model_path` if none is active.

    The new version holds full weights (artifact = base model = the given path or hub id) and has
    no parent. A version already registered for that path is re-used rather than duplicated.
    When a version is already active it is returned unchanged, whatever the path.
    """
    base_model_path = str(base_model_path)
    if not base_model_path:
        raise ValidationError({"base_model": "a base model path or hub id is required"})
    with transaction.atomic():
        active = ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.ACTIVE).first()
        if active is not None:
            return active
        if Path(base_model_path).is_absolute() and not Path(base_model_path).exists():
            raise ValidationError({"base_model": f"{base_model_path} does not exist"})
        existing = (
            ModelVersion.objects.filter(artifact_path=base_model_path, is_adapter=False, parent__isnull=True)
            .exclude(status=ModelVersion.Status.REJECTED)
            .first()
        )
        if existing is None:
            unique_name, n = name, 1
            while ModelVersion.objects.filter(name=unique_name).exists():
                n += 1
                unique_name = f"{name}-{n}"
            existing = ModelVersion.objects.create(
                name=unique_name, base_model=base_model_path, artifact_path=base_model_path, is_adapter=False
            )
        return promote(existing, reason="base model (first active version)")


def create_candidate_version(
    run: TrainingRun, *, artifact_path: str, is_adapter: bool, trained_from: str
) -> ModelVersion:
    """Register the model a succeeded run produced as a candidate awaiting the evaluation gate.

    trained_from: the full-weights directory the engine was given as --model. An adapter applies
    on top of it, so it is the adapter's base_model; full weights keep the lineage's root model.
    """
    base = run.base_version
    base_model = trained_from if is_adapter else (base.base_model if base is not None else trained_from)
    return ModelVersion.objects.create(
        name=f"run-{run.pk}",
        base_model=base_model,
        artifact_path=artifact_path,
        is_adapter=is_adapter,
        parent=base,
        created_by_run=run,
        status=ModelVersion.Status.CANDIDATE,
        status_reason="awaiting the evaluation gate",
        evaluation_state=ModelVersion.EvaluationState.PENDING,
    )
