"""Writes of the training loop: runs, model versions, the policy row, the reaper.

Every state change of a run or a version goes through here (or through training.runner /
training.gate, which call these), inside a transaction, with a conditional UPDATE where two
processes could race (two workers, a worker and the web's cancel button, the reaper).

Public API (views, commands, tasks call these; the signatures are a contract):
    get_policy()                      -> TrainingPolicy (the singleton, created from settings)
    default_training_config()         -> dict
    resolve_training_config(overrides)-> dict   (defaults + validated overrides)
    start_run(*, snapshot=None, config=None, base_version=None, requested_by=None) -> TrainingRun
    cancel_run(run)                   -> None
    promote(version, *, reason="")    -> ModelVersion
    rollback()                        -> ModelVersion
    reject(version, reason)           -> None
    ensure_base_version(base_model_path, *, name="base") -> ModelVersion
    dispatch_pending_runs()           -> list[int]
    reap_orphaned_runs()              -> list[int]
"""
from __future__ import annotations

import logging
import socket
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from training.models import ModelVersion, TrainingPolicy, TrainingRun

logger = logging.getLogger(__name__)

# The TrainingPolicy fields that make up a run's training config (the rest is scheduling).
CONFIG_FIELDS = (
    "base_model",
    "lora",
    "beta",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "loss",
    "lambda_mode",
    "target_ratio",
    "desirable_weight",
    "undesirable_weight",
    "holdout",
    "seed",
    "promote_margin",
    "judge",
    "judge_prompts",
    "time_limit_seconds",
)

ACTIVE_RUN_STATUSES = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)


# --- Policy and config -------------------------------------------------------------------------
def _policy_defaults_from_settings() -> dict:
    return {
        "enabled": settings.PROSPECT_RETRAIN_ENABLED,
        "min_new_votes": settings.PROSPECT_RETRAIN_MIN_NEW_VOTES,
        "cooldown_seconds": settings.PROSPECT_RETRAIN_COOLDOWN_SECONDS,
        "base_model": settings.PROSPECT_BASE_MODEL,
        "lora": settings.PROSPECT_TRAIN_LORA,
        "beta": settings.PROSPECT_TRAIN_BETA,
        "learning_rate": settings.PROSPECT_TRAIN_LEARNING_RATE,
        "num_train_epochs": settings.PROSPECT_TRAIN_EPOCHS,
        "max_steps": settings.PROSPECT_TRAIN_MAX_STEPS or None,
        "per_device_train_batch_size": settings.PROSPECT_TRAIN_BATCH_SIZE,
        "gradient_accumulation_steps": settings.PROSPECT_TRAIN_GRAD_ACCUM,
        "max_length": settings.PROSPECT_TRAIN_MAX_LENGTH,
        "loss": settings.PROSPECT_TRAIN_LOSS,
        "lambda_mode": settings.PROSPECT_TRAIN_LAMBDA_MODE,
        "holdout": settings.PROSPECT_TRAIN_HOLDOUT,
        "seed": settings.PROSPECT_TRAIN_SEED,
        "promote_margin": settings.PROSPECT_PROMOTE_MARGIN,
        "judge": settings.PROSPECT_GATE_JUDGE,
        "judge_prompts": settings.PROSPECT_GATE_JUDGE_PROMPTS,
    }


def get_policy() -> TrainingPolicy:
    """The one TrainingPolicy row; created from the PROSPECT_* settings the first time it is read."""
    policy = TrainingPolicy.objects.filter(pk=1).first()
    if policy is not None:
        return policy
    candidate = TrainingPolicy(pk=1, **_policy_defaults_from_settings())
    # A bad environment value must fail loudly here, naming the setting's field.
    candidate.full_clean()
    try:
        with transaction.atomic():
            candidate.save(force_insert=True)
        return candidate
    except IntegrityError:
        # Another process created it between our read and our insert: use theirs.
        return TrainingPolicy.objects.get(pk=1)


def default_training_config() -> dict:
    """The training config a run gets when nothing is overridden: the policy row's values.

    Keys (all present): base_model (str, "" = none configured), lora (bool), beta, learning_rate,
    num_train_epochs (float), max_steps (int | None), per_device_train_batch_size,
    gradient_accumulation_steps, max_length (int), loss ("kto", "no_z0", "concave",
    "risk_neutral", "reference_free", "sft", "dpo"), lambda_mode ("auto", "downside_first",
    "manual"), target_ratio, desirable_weight, undesirable_weight (floats; the weights are used in
    manual mode), holdout (float in [0, 1)), seed (int), promote_margin (float), judge ("demo" |
    "none"), judge_prompts (int), time_limit_seconds (int; PROSPECT_MAX_RUN_SECONDS when the
    policy leaves it empty).
    """
    policy = get_policy()
    config = {name: getattr(policy, name) for name in CONFIG_FIELDS}
    if not config["time_limit_seconds"]:
        config["time_limit_seconds"] = settings.PROSPECT_MAX_RUN_SECONDS
    return config


def resolve_training_config(overrides: dict | None = None) -> dict:
    """Defaults with `overrides` applied and validated; raises ValidationError naming the field.

    Unknown keys are refused (a typo must not silently train with the default). Values are
    converted like a form would ("0.1" → 0.1, "true" → True for lora), using the TrainingPolicy
    field definitions, so the admin, the "retrain now" form and the API accept the same values.
    """
    config = default_training_config()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValidationError({key: f"unknown training option {key!r}" for key in unknown})
    errors: dict[str, list[str]] = {}
    for name, raw in overrides.items():
        field = TrainingPolicy._meta.get_field(name)
        if raw in (None, "") and field.null:
            config[name] = None
            continue
        if name == "lora" and isinstance(raw, str):
            raw = raw.strip().lower() in ("1", "true", "yes", "on")
        try:
            config[name] = field.clean(raw, None)
        except ValidationError as exc:
            errors[name] = exc.messages
    if config["time_limit_seconds"] in (None, 0):
        config["time_limit_seconds"] = settings.PROSPECT_MAX_RUN_SECONDS
    if config["time_limit_seconds"] > settings.PROSPECT_MAX_RUN_SECONDS:
        # The broker's visibility timeout is sized for PROSPECT_MAX_RUN_SECONDS; a longer run
        # would be re-delivered while it still trains.
        errors.setdefault("time_limit_seconds", []).append(
            f"at most PROSPECT_MAX_RUN_SECONDS={settings.PROSPECT_MAX_RUN_SECONDS}"
        )
    if errors:
        raise ValidationError(errors)
    return config


# --- Runs --------------------------------------------------------------------------------------
def _create_snapshot_for(config: dict):
    from feedback.services import create_snapshot

    manual = None
    if config["lambda_mode"] == TrainingPolicy.LambdaMode.MANUAL:
        manual = (config["desirable_weight"], config["undesirable_weight"])
    return create_snapshot(
        holdout=config["holdout"],
        target_ratio=config["target_ratio"],
        mode="downside_first" if config["lambda_mode"] == TrainingPolicy.LambdaMode.DOWNSIDE_FIRST else "auto",
        manual_weights=manual,
        seed=config["seed"],
    )


def start_run(*, snapshot=None, config: dict | None = None, base_version=None, requested_by=None) -> TrainingRun:
    """Create a queued TrainingRun and send `run_training` to the gpu queue once the row is committed.

    snapshot: a feedback.DatasetSnapshot; None → a fresh one is cut now with
        feedback.services.create_snapshot (holdout, λ mode/target/manual weights and seed taken
        from the config). Its refusal (e.g. SnapshotRefused for a single-class dataset) propagates.
    config: overrides of default_training_config() (validated; ValidationError names the field).
    base_version: the ModelVersion to train from; None → the active version, or — when nothing
        is active yet — ensure_base_version(config["base_model"]). ValidationError when there is
        neither an active version nor a base model configured.
    requested_by: the user who asked (None for the scheduler).

    If the broker is unreachable the run is still created (queued, enqueued_at empty) and the
    periodic dispatcher sends it once the broker is back; the caller never sees a broker error.
    """
    from training.selectors import active_version

    resolved = resolve_training_config(config)
    with transaction.atomic():
        if base_version is None:
            base_version = active_version()
        if base_version is None:
            if not resolved["base_model"]:
                raise ValidationError(
                    {"base_model": "no model version is active and no base model is configured "
                     "(set PROSPECT_BASE_MODEL or the training policy's base model)"}
                )
            base_version = ensure_base_version(resolved["base_model"])
        if snapshot is None:
            snapshot = _create_snapshot_for(resolved)
        run = TrainingRun.objects.create(
            snapshot=snapshot,
            base_version=base_version,
            config=resolved,
            status=TrainingRun.Status.QUEUED,
            requested_by=requested_by,
        )
        run_id = run.pk
        transaction.on_commit(lambda: _enqueue_run(run_id))
    return run


def _enqueue_run(run_id: int) -> bool:
    """Send run_training for a run; record when it reached the broker. False if the broker is down."""
    from training.tasks import run_training

    try:
        run_training.apply_async(args=[run_id], retry=False)
    except Exception as exc:  # kombu raises various OperationalError/ConnectionError flavours
        # Saving the run must not depend on the broker: the dispatcher re-sends it later.
        logger.warning("run %s: could not reach the broker (%s); the dispatcher will send it later", run_id, exc)
        return False
    TrainingRun.objects.filter(pk=run_id, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return True


def dispatch_pending_runs() -> list[int]:
    """Send the queued runs whose message never reached the broker; returns their ids.

    Called periodically (beat → training.tasks.maybe_retrain). A run sent twice is harmless: the
    task's status guard lets only one delivery train it.
    """
    sent = []
    pending = TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED, enqueued_at__isnull=True).order_by("pk")
    for run_id in pending.values_list("pk", flat=True):
        if _enqueue_run(run_id):
            sent.append(run_id)
    return sent


def cancel_run(run: TrainingRun) -> None:
    """Cancel a queued or running run.

    Queued: it becomes cancelled and its task, when delivered, does nothing. Running: it becomes
    cancelled in the database; the runner's monitor notices within PROSPECT_RUN_POLL_SECONDS,
    kills the training process group and records the exit code. Raises ValidationError when the
    run has already finished.
    """
    now = timezone.now()
    cancelled = TrainingRun.objects.filter(pk=run.pk, status__in=ACTIVE_RUN_STATUSES).update(
        status=TrainingRun.Status.CANCELLED, error="cancelled by an admin", finished_at=now
    )
    run.refresh_from_db()
    if not cancelled:
        raise ValidationError(f"run {run.pk} has already finished ({run.status}); nothing to cancel")


# --- Model versions ----------------------------------------------------------------------------
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
        candidates = [v for v in (current.previous_active, current.parent)
                      if v is not None and v.status != ModelVersion.Status.REJECTED]
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
        existing = ModelVersion.objects.filter(
            artifact_path=base_model_path, is_adapter=False, parent__isnull=True
        ).exclude(status=ModelVersion.Status.REJECTED).first()
        if existing is None:
            unique_name, n = name, 1
            while ModelVersion.objects.filter(name=unique_name).exists():
                n += 1
                unique_name = f"{name}-{n}"
            existing = ModelVersion.objects.create(
                name=unique_name, base_model=base_model_path, artifact_path=base_model_path, is_adapter=False
            )
        return promote(existing, reason="base model (first active version)")


def create_candidate_version(run: TrainingRun, *, artifact_path: str, is_adapter: bool, trained_from: str) -> ModelVersion:
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


# --- Reaper ------------------------------------------------------------------------------------
def reap_orphaned_runs() -> list[int]:
    """Mark failed the running runs whose worker is gone; kill their leftover training processes.

    A run is orphaned when its worker ran on this host and that process no longer exists, or
    when its heartbeat is older than PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS (any host). Runs are
    not resumed: a failed run is retried by starting a new one (its artifacts stay for
    inspection). Returns the ids of the runs marked failed.
    """
    from training.runner import kill_run_processes, process_alive

    hostname = socket.gethostname()
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS)
    reaped = []
    for run in TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING):
        reason = None
        if run.worker_hostname == hostname and run.worker_pid and not process_alive(run.worker_pid):
            reason = f"worker process {run.worker_pid} on {hostname} died while the run was training"
        elif (run.heartbeat_at or run.started_at or run.created_at) < stale_before:
            reason = (
                f"no heartbeat from worker {run.worker_hostname}:{run.worker_pid} for more than "
                f"{settings.PROSPECT_RUN_HEARTBEAT_TIMEOUT_SECONDS}s"
            )
        if reason is None:
            continue
        marked = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
            status=TrainingRun.Status.FAILED, error=reason, finished_at=now
        )
        if not marked:
            continue
        logger.warning("run %s marked failed: %s", run.pk, reason)
        reaped.append(run.pk)
        if run.worker_hostname == hostname and run.process_group_id:
            # The training tree runs in its own session and outlives its worker: stop it too.
            kill_run_processes(run.process_group_id, run.pk, run_dir=run.artifact_dir or None)
    _fail_gates_of_dead_workers(hostname)
    return reaped


def _fail_gates_of_dead_workers(hostname: str) -> None:
    """A worker that died while gating its run's candidate leaves evaluation_state 'running':
    record that the gate failed, so the Models page says so (an admin may promote by hand)."""
    from training.runner import process_alive

    evaluating = ModelVersion.objects.filter(
        evaluation_state=ModelVersion.EvaluationState.RUNNING, created_by_run__worker_hostname=hostname
    ).select_related("created_by_run")
    for version in evaluating:
        pid = version.created_by_run.worker_pid
        if pid and not process_alive(pid):
            ModelVersion.objects.filter(pk=version.pk, evaluation_state=ModelVersion.EvaluationState.RUNNING).update(
                evaluation_state=ModelVersion.EvaluationState.FAILED,
                status_reason=f"not promoted: worker process {pid} died during the evaluation gate",
            )
