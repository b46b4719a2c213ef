"""The retraining policy: the admin-editable TrainingPolicy row, the training config it implies, and
the rule that says when a new run is due.

Reads and the creation of the single row only; nothing here starts or changes a run (that is
training.runs, which reads this module, never the other way round).

Public API (views, commands and the layers above call these; the signatures are a contract):
    get_policy(project=None)           -> TrainingPolicy (the project's, created from settings)
    default_training_config(project=None) -> dict
    resolve_training_config(overrides, project=None) -> dict   (defaults + validated overrides)
    retrain_decision(policy, now=None) -> (bool, str)   (for policy.project)
project: a Project, its name, or None for the default project.
"""

from __future__ import annotations

import copy
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.selectors import resolve_project
from training.models import TrainingPolicy, TrainingRun
from training.selectors import active_run, new_votes_since_last_trained_snapshot

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
    "judges",
    "judge_prompts",
    "confidence",
    "min_holdout_examples",
    "canary_share",
    "canary_min_votes",
    "canary_max_votes",
    "llm_judge_url",
    "llm_judge_model",
    "llm_judge_prompt",
    "llm_judge_api_key_env",
    "time_limit_seconds",
)
# The CONFIG_FIELDS the evaluation gate reads (a run records them, so its gate is the one it was started with).
GATE_FIELDS = CONFIG_FIELDS[CONFIG_FIELDS.index("promote_margin") : CONFIG_FIELDS.index("time_limit_seconds")]


def get_policy(project=None) -> TrainingPolicy:
    """The project's TrainingPolicy row; created from the PROSPECT_* settings (and the project's own
    base model, if it names one) the first time it is read."""
    project = resolve_project(project)
    policy = TrainingPolicy.objects.filter(project=project).first()
    if policy is not None:
        return policy
    # Each field's default reads its setting (see training.models.setting_default).
    candidate = TrainingPolicy(project=project)
    if project.base_model:
        candidate.base_model = project.base_model
    # A bad environment value must fail loudly here, naming the setting's field.
    candidate.full_clean()
    try:
        with transaction.atomic():
            candidate.save(force_insert=True)
        return candidate
    except IntegrityError:
        # Another process created it between our read and our insert: use theirs.
        return TrainingPolicy.objects.get(project=project)


def default_training_config(project=None) -> dict:
    """The training config a run gets when nothing is overridden: the policy row's values.

    Keys (all present): base_model (str, "" = none configured), lora (bool), beta, learning_rate,
    num_train_epochs (float), max_steps (int | None), per_device_train_batch_size,
    gradient_accumulation_steps, max_length (int), loss ("kto", "no_z0", "concave",
    "risk_neutral", "reference_free", "sft", "dpo"), lambda_mode ("auto", "downside_first",
    "manual"), target_ratio, desirable_weight, undesirable_weight (floats; the weights are used in
    manual mode), holdout (float in [0, 1)), seed (int), time_limit_seconds (int;
    PROSPECT_MAX_RUN_SECONDS when the policy leaves it empty), and the gate's (GATE_FIELDS):
    promote_margin (float), judges (comma-separated names of training.judges.JUDGES),
    judge_prompts (int), confidence (float), min_holdout_examples, canary_share,
    canary_min_votes, canary_max_votes, llm_judge_url, llm_judge_model, llm_judge_prompt,
    llm_judge_api_key_env.
    """
    policy = get_policy(project)
    config = {name: getattr(policy, name) for name in CONFIG_FIELDS}
    if not config["time_limit_seconds"]:
        config["time_limit_seconds"] = settings.PROSPECT_MAX_RUN_SECONDS
    return config


def gate_policy(version_config: dict | None, project=None) -> TrainingPolicy:
    """The policy the gate judges a candidate by: the project's row with the gate options its run
    recorded (a run's config wins over later edits of the policy). An unsaved copy: never save it."""
    policy = copy.copy(get_policy(project))
    for name in GATE_FIELDS:
        if name in (version_config or {}):
            setattr(policy, name, version_config[name])
    return policy


def resolve_training_config(overrides: dict | None = None, project=None) -> dict:
    """Defaults with `overrides` applied and validated; raises ValidationError naming the field.

    Unknown keys are refused (a typo must not silently train with the default). Values are
    converted like a form would ("0.1" → 0.1, "true" → True for lora), using the TrainingPolicy
    field definitions, so the admin, the "retrain now" form and the API accept the same values.
    """
    config = default_training_config(project)
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
        if name == "judges" and isinstance(raw, (list, tuple)):
            raw = ",".join(raw)
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


def retrain_decision(policy: TrainingPolicy, now=None) -> tuple[bool, str]:
    """(should a run start now, why / why not) — the policy's rules, read-only.

    The decision only reads the database (votes newer than the last_vote_id of the latest snapshot
    a run is training or successfully trained on), so votes that arrived while Redis or the workers
    were down are counted at the next check, and a crashed run does not use up the new votes.
    """
    now = now or timezone.now()
    if not policy.enabled:
        return False, "automatic retraining is disabled"
    active = active_run(policy.project)
    if active is not None:
        return False, f"run {active.pk} is {active.status}"
    new_votes = new_votes_since_last_trained_snapshot(policy.project)
    if new_votes < policy.min_new_votes:
        return False, f"{new_votes} new votes, waiting for {policy.min_new_votes}"
    last = TrainingRun.objects.filter(project=policy.project).order_by("-created_at").first()
    if last is not None and policy.cooldown_seconds:
        ready_at = last.created_at + timedelta(seconds=policy.cooldown_seconds)
        if now < ready_at:
            return False, f"cooling down until {ready_at.isoformat()}"
    return True, f"{new_votes} new votes since the last trained snapshot"
