"""The model registry: versions, which one is active, promote / roll back / reject.

Every state change of a ModelVersion goes through here (or through training.gate, which calls
promote), inside a transaction; the partial unique constraint `one_active_model_version` makes
"exactly one active" the database's rule, not this module's.

Public API (views, commands and the layers above call these; the signatures are a contract):
    promote(version, *, reason="")    -> ModelVersion   (within version.project)
    rollback(project=None)            -> ModelVersion
    reject(version, reason)           -> None
    ensure_base_version(base_model_path, *, name="base", project=None) -> ModelVersion
    artifact_problem(version)         -> str | None
    create_candidate_version(run, *, artifact_path, is_adapter, trained_from) -> ModelVersion
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from safetensors import safe_open

from projects.selectors import resolve_project
from training.models import ModelVersion, TrainingRun

# A save_pretrained directory holds one of these (full weights / a peft adapter) next to its weights.
_MODEL_CONFIGS = ("config.json", "adapter_config.json")
_WEIGHTS_SUFFIXES = (".safetensors", ".bin")


def artifact_problem(version: ModelVersion) -> str | None:
    """Why the version's files cannot be served, or None when they look loadable.

    A local directory must hold a model or adapter config and weights (an adapter's base model
    too); a name that is not a local path is a hub id, left to the serving process to fetch.
    """
    paths = [("artifact", version.artifact_path)]
    if version.is_adapter:
        paths.append(("base model", version.base_model))
    for what, raw in paths:
        path = Path(raw)
        if not path.is_absolute() and not path.exists():
            continue  # a hub id
        if not path.is_dir():
            return f"its {what} directory {raw} does not exist"
        configs = [path / name for name in _MODEL_CONFIGS if (path / name).is_file()]
        if not configs:
            return f"its {what} directory {raw} holds no config.json or adapter_config.json"
        for config in configs:
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeError, ValueError) as exc:
                return f"its {config} is not readable JSON ({exc})"
        weights = [child for child in path.iterdir() if child.suffix in _WEIGHTS_SUFFIXES]
        if not weights:
            return f"its {what} directory {raw} holds no weights (*.safetensors or *.bin)"
        for file in weights:
            if file.suffix == ".safetensors" and (problem := _safetensors_problem(file)):
                return f"its weights file {file} does not load ({problem})"
    return None


def _safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be opened, reading only its header (the web process never
    loads a model: this is the check that a truncated or garbled file would fail at load time)."""
    try:
        with safe_open(str(file), framework="numpy") as handle:
            handle.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError, and OSError
        return str(exc) or type(exc).__name__
    return None


def promote(version: ModelVersion, *, reason: str = "") -> ModelVersion:
    """Make `version` the active one of its project, retiring the project's active version, in one
    transaction. Raises ValidationError (changing nothing) when the version's files cannot load.

    The partial unique constraint `one_active_model_version` guarantees that two concurrent
    promotions in a project cannot both succeed. Promoting the already active version is a no-op.
    """
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status == ModelVersion.Status.ACTIVE:
            return version
        problem = artifact_problem(version)
        if problem is not None:
            raise ValidationError(f"{version.name} cannot be promoted: {problem}")
        current = (
            ModelVersion.objects.select_for_update()
            .filter(project_id=version.project_id, status=ModelVersion.Status.ACTIVE)
            .first()
        )
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


def rollback(project=None) -> ModelVersion:
    """Re-activate the version the active one replaced (else its parent), in one transaction.

    The rolled-back version becomes retired, its reason naming the version that replaced it.
    Raises ValidationError when nothing is active or there is nothing to roll back to.
    """
    project = resolve_project(project)
    with transaction.atomic():
        current = (
            ModelVersion.objects.select_for_update().filter(project=project, status=ModelVersion.Status.ACTIVE).first()
        )
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


def ensure_base_version(base_model_path: str, *, name: str = "base", project=None) -> ModelVersion:
    """The active version, creating and activating one from `base_model_path` if none is active.

    The new version holds full weights (artifact = base model = the given path or hub id) and has
    no parent. A version already registered for that path is re-used rather than duplicated.
    When a version is already active it is returned unchanged, whatever the path.
    """
    base_model_path = str(base_model_path)
    if not base_model_path:
        raise ValidationError({"base_model": "a base model path or hub id is required"})
    project = resolve_project(project)
    with transaction.atomic():
        active = (
            ModelVersion.objects.select_for_update().filter(project=project, status=ModelVersion.Status.ACTIVE).first()
        )
        if active is not None:
            return active
        if Path(base_model_path).is_absolute() and not Path(base_model_path).exists():
            raise ValidationError({"base_model": f"{base_model_path} does not exist"})
        existing = (
            ModelVersion.objects.filter(
                project=project, artifact_path=base_model_path, is_adapter=False, parent__isnull=True
            )
            .exclude(status=ModelVersion.Status.REJECTED)
            .first()
        )
        if existing is None:
            unique_name, n = name, 1
            while ModelVersion.objects.filter(project=project, name=unique_name).exists():
                n += 1
                unique_name = f"{name}-{n}"
            existing = ModelVersion.objects.create(
                project=project,
                name=unique_name,
                base_model=base_model_path,
                artifact_path=base_model_path,
                is_adapter=False,
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
        project_id=run.project_id,
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
