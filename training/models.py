"""Training runs and model versions. `status` on each row is the single source of truth."""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from training.judges import JUDGES
from training.kto import defaults


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        CANDIDATE = "candidate"
        ACTIVE = "active"
        RETIRED = "retired"
        REJECTED = "rejected"

    class EvaluationState(models.TextChoices):
        NOT_REQUIRED = "", "not required"
        PENDING = "pending"
        RUNNING = "running"
        # A judge (blind comparisons, a canary) is still gathering evidence; beat asks it again.
        COLLECTING = "collecting", "collecting evidence"
        DONE = "done"
        FAILED = "failed"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="model_versions")
    name = models.CharField(max_length=100)
    # Hub id or local path of the base model the weights/adapter belong to.
    base_model = models.CharField(max_length=500)
    # A save_pretrained directory: full weights, or a peft adapter over base_model.
    artifact_path = models.CharField(max_length=1000)
    is_adapter = models.BooleanField(default=False)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    created_by_run = models.OneToOneField(
        "TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_version"
    )
    metrics = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE, db_index=True)
    status_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)
    # The version this one replaced when it was promoted: what "roll back" re-activates.
    previous_active = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaced_by"
    )
    # The evaluation gate's own state, so a redelivered gate task evaluates once.
    evaluation_state = models.CharField(
        max_length=20, choices=EvaluationState.choices, default=EvaluationState.NOT_REQUIRED, blank=True
    )
    # The canary: while > 0 (and the version is a candidate), this share of its project's product
    # traffic is answered by it (training.routing). Set by the canary judge, back to 0 when the gate decides.
    canary_share = models.FloatField(default=0.0)
    canary_started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Exactly one active version per project, enforced by the database, not by application code.
            models.UniqueConstraint(fields=["project"], condition=Q(status="active"), name="one_active_model_version"),
            models.UniqueConstraint(fields=["project", "name"], name="one_model_version_name_per_project"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class HeldoutOutput(models.Model):
    """A version's greedy output on one of its project's fixed held-out prompts, stored by the gate.

    Not a feedback.Generation: those are one row per (prompt, completion), so two versions giving
    the same answer would share a row, and they are what annotators are served. These are only
    shown side by side on the compare page, never rated and never trained on.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="heldout_outputs")
    # A plain string or a list of chat messages, as feedback.Prompt.content.
    prompt = models.JSONField()
    # feedback.content.prompt_sha256 of `prompt`: what aligns two versions' outputs.
    prompt_sha256 = models.CharField(max_length=64)
    completion = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "prompt_sha256"], name="one_heldout_output_per_version_prompt"),
        ]

    @property
    def is_chat(self) -> bool:
        return isinstance(self.prompt, list)

    def __str__(self) -> str:
        return f"held-out output of {self.version_id} on {self.prompt_sha256[:12]}"


class ServedCompletion(models.Model):
    """One answer the product API served: which version produced it, for which end user.

    The generation row is shared by every request that got the same completion for the same prompt
    (and names the version that first produced it), so this is what says which version a given
    end user was shown: the canary credits that user's thumbs to it.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="served_completions")
    generation = models.ForeignKey("feedback.Generation", on_delete=models.CASCADE, related_name="servings")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="servings")
    # The caller's end user (the API's `user`; the same id they send as external_user_id with the
    # thumbs); "" when the request named none.
    routing_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["generation", "routing_key"], name="served_generation_user")]

    def __str__(self) -> str:
        return f"generation {self.generation_id} served by {self.version_id}"


class TrainingRun(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="training_runs")
    snapshot = models.ForeignKey("feedback.DatasetSnapshot", on_delete=models.PROTECT, related_name="training_runs")
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs_based_on"
    )
    config = models.JSONField(default=dict, blank=True)
    # λ_D, λ_U this run trains with, chosen once when the run is created: the snapshot's, unless a
    # manual override (lambda_mode "manual" on an existing snapshot) replaced them. Passed to the
    # engine as --desirable-weight / --undesirable-weight; weight_rule says where they came from.
    desirable_weight = models.FloatField()
    undesirable_weight = models.FloatField()
    weight_rule = models.TextField(blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0)
    metrics = models.JSONField(default=list, blank=True)
    log_tail = models.TextField(blank=True)
    artifact_dir = models.CharField(max_length=1000, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    # Set once the run_training message reached the broker; a queued run without it is re-sent
    # by the periodic dispatcher (the broker was down when the run was requested).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Who is running it: the reaper uses these to tell a live run from one whose worker died.
    worker_hostname = models.CharField(max_length=255, blank=True)
    worker_pid = models.IntegerField(null=True, blank=True)
    # The worker process's identity on its host (boot id, pid, start time): a reused pid is not it.
    worker_start_id = models.CharField(max_length=100, blank=True)
    # Process group of the training subprocess tree (its leader's pid): what timeout/cancel kill.
    process_group_id = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.status})"

    @property
    def overrides_snapshot_weights(self) -> bool:
        """True when the run trains with other λ than its snapshot's (a manual override)."""
        return (self.desirable_weight, self.undesirable_weight) != (
            self.snapshot.desirable_weight,
            self.snapshot.undesirable_weight,
        )


# A run in one of these states is not finished: it may still train.
ACTIVE_RUN_STATUSES = (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)


def _setting(name: str):
    return getattr(settings, name)


def _max_steps_setting():
    return settings.PROSPECT_TRAIN_MAX_STEPS or None  # 0 in the environment: no cap


def setting_default(name: str):
    """A field default read from settings.NAME when a row is created: the setting's own default
    (config/settings.py) is the one place the number is written."""
    return partial(_setting, name)


DEFAULT_LLM_JUDGE_PROMPT = """You compare two answers to the same request.

Request:
{prompt}

Answer A:
{answer_a}

Answer B:
{answer_b}

Which answer is better? Reply with one word: A, B, or tie."""
LLM_JUDGE_PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")


def validate_judge_names(value: str) -> None:
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    if not names:
        raise ValidationError("choose at least one judge")
    unknown = [name for name in names if name not in JUDGES]
    if unknown:
        raise ValidationError(f"unknown judge {unknown[0]!r}; known judges: {', '.join(JUDGES)}")
    if len(set(names)) != len(names):
        raise ValidationError("a judge is named twice")


def validate_llm_judge_prompt(value: str) -> None:
    missing = [name for name in LLM_JUDGE_PLACEHOLDERS if name not in (value or "")]
    if missing:
        raise ValidationError(f"the prompt template lacks {', '.join(missing)}")


class TrainingPolicy(models.Model):
    """The admin-editable retraining policy and default training config (one row per project).

    Missing row → created from settings on first read (see training.policy.get_policy): every
    field's default is the PROSPECT_* setting it names (base_model: the project's, if it has one).
    """

    class LambdaMode(models.TextChoices):
        AUTO = "auto", "automatic (paper's rule)"
        DOWNSIDE_FIRST = "downside_first", "automatic, downside first"
        MANUAL = "manual", "manual weights"

    # One choice per row of the engine's variant table (training/kto/loss.py).
    Loss = models.TextChoices("Loss", [(name.upper(), name) for name in defaults.LOSS_TYPES])

    project = models.OneToOneField("projects.Project", on_delete=models.CASCADE, related_name="training_policy")
    # --- scheduling ---
    enabled = models.BooleanField(
        default=setting_default("PROSPECT_RETRAIN_ENABLED"),
        help_text="Retrain automatically when enough new votes arrived.",
    )
    min_new_votes = models.PositiveIntegerField(
        default=setting_default("PROSPECT_RETRAIN_MIN_NEW_VOTES"), help_text="N: new votes since the last snapshot."
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=setting_default("PROSPECT_RETRAIN_COOLDOWN_SECONDS"),
        help_text="Minimum time between the start of two automatic runs.",
    )
    # --- training config ---
    base_model = models.CharField(
        max_length=500,
        blank=True,
        default=setting_default("PROSPECT_BASE_MODEL"),
        help_text="Local model directory; used only when no version is active yet.",
    )
    lora = models.BooleanField(
        default=setting_default("PROSPECT_TRAIN_LORA"), help_text="Train a LoRA adapter instead of full weights."
    )
    beta = models.FloatField(default=setting_default("PROSPECT_TRAIN_BETA"), validators=[MinValueValidator(1e-6)])
    learning_rate = models.FloatField(
        default=setting_default("PROSPECT_TRAIN_LEARNING_RATE"), validators=[MinValueValidator(1e-12)]
    )
    num_train_epochs = models.FloatField(
        default=setting_default("PROSPECT_TRAIN_EPOCHS"), validators=[MinValueValidator(1e-3)]
    )
    max_steps = models.PositiveIntegerField(
        null=True,
        blank=True,
        default=_max_steps_setting,
        validators=[MinValueValidator(1)],
        help_text="Empty: train the full epochs.",
    )
    # KTO's z0 pairs each prompt with another example's completion: a microbatch needs ≥ 2.
    per_device_train_batch_size = models.PositiveIntegerField(
        default=setting_default("PROSPECT_TRAIN_BATCH_SIZE"), validators=[MinValueValidator(2)]
    )
    gradient_accumulation_steps = models.PositiveIntegerField(
        default=setting_default("PROSPECT_TRAIN_GRAD_ACCUM"), validators=[MinValueValidator(1)]
    )
    max_length = models.PositiveIntegerField(
        default=setting_default("PROSPECT_TRAIN_MAX_LENGTH"), validators=[MinValueValidator(8)]
    )
    loss = models.CharField(max_length=20, choices=Loss.choices, default=setting_default("PROSPECT_TRAIN_LOSS"))
    lambda_mode = models.CharField(
        max_length=20, choices=LambdaMode.choices, default=setting_default("PROSPECT_TRAIN_LAMBDA_MODE")
    )
    target_ratio = models.FloatField(
        default=setting_default("KTO_TARGET_RATIO"),
        validators=[MinValueValidator(1e-3)],
        help_text="λ_D·n_D / (λ_U·n_U) aimed at by the automatic rule.",
    )
    desirable_weight = models.FloatField(
        default=defaults.TRL_DESIRABLE_WEIGHT,
        validators=[MinValueValidator(1e-6)],
        help_text="λ_D, used in manual mode.",
    )
    undesirable_weight = models.FloatField(
        default=defaults.TRL_UNDESIRABLE_WEIGHT,
        validators=[MinValueValidator(1e-6)],
        help_text="λ_U, used in manual mode.",
    )
    holdout = models.FloatField(
        default=setting_default("SNAPSHOT_HOLDOUT"),
        validators=[MinValueValidator(0.0), MaxValueValidator(0.9)],
        help_text="Fraction of each snapshot held out for the gate.",
    )
    seed = models.IntegerField(default=setting_default("PROSPECT_TRAIN_SEED"))
    time_limit_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Kill a run after this long. Empty: PROSPECT_MAX_RUN_SECONDS."
    )
    # --- evaluation gate ---
    promote_margin = models.FloatField(
        default=setting_default("PROSPECT_PROMOTE_MARGIN"),
        help_text="Auto-promote only when the candidate beats the active version by this much.",
    )
    judges = models.CharField(
        max_length=200,
        default=setting_default("PROSPECT_GATE_JUDGES"),
        validators=[validate_judge_names],
        help_text="Comma-separated, all must agree to promote: "
        "demo (the demo task's program judge), heldout (held-out metrics, paired test), "
        "pairwise (blind comparisons by annotators), canary (live traffic), llm (an LLM judge).",
    )
    judge_prompts = models.PositiveIntegerField(
        default=setting_default("PROSPECT_GATE_JUDGE_PROMPTS"),
        validators=[MinValueValidator(1)],
        help_text="Held-out prompts the demo and LLM judges score.",
    )
    confidence = models.FloatField(
        default=setting_default("PROSPECT_GATE_CONFIDENCE"),
        validators=[MinValueValidator(0.5), MaxValueValidator(0.999)],
        help_text="Promote only when the candidate is better at this confidence (the interval of its advantage lies above none).",
    )
    min_holdout_examples = models.PositiveIntegerField(
        default=setting_default("PROSPECT_GATE_MIN_HOLDOUT_EXAMPLES"),
        validators=[MinValueValidator(2)],
        help_text="The heldout judge refuses (inconclusive) on fewer held-out examples.",
    )
    canary_share = models.FloatField(
        default=setting_default("PROSPECT_GATE_CANARY_SHARE"),
        validators=[MinValueValidator(0.001), MaxValueValidator(0.5)],
        help_text="Share of product traffic the candidate answers during its canary.",
    )
    canary_min_votes = models.PositiveIntegerField(
        default=setting_default("PROSPECT_GATE_CANARY_MIN_VOTES"),
        validators=[MinValueValidator(1)],
        help_text="End-user votes each side needs before the canary decides.",
    )
    canary_max_votes = models.PositiveIntegerField(
        default=setting_default("PROSPECT_GATE_CANARY_MAX_VOTES"),
        validators=[MinValueValidator(1)],
        help_text="Stop the canary (inconclusive, not promoted) when each side has this many votes and no difference shows.",
    )
    llm_judge_url = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="Base URL of an OpenAI-compatible API, e.g. http://host:8000/v1.",
    )
    llm_judge_model = models.CharField(max_length=200, blank=True, default="", help_text="The judge model's name.")
    llm_judge_prompt = models.TextField(
        default=DEFAULT_LLM_JUDGE_PROMPT,
        validators=[validate_llm_judge_prompt],
        help_text="Sent as the user message; {prompt}, {answer_a} and {answer_b} are filled in. "
        "The judge must answer A, B or tie.",
    )
    llm_judge_api_key_env = models.CharField(
        max_length=100,
        blank=True,
        default="",
        help_text="Name of the environment variable holding the judge API's key (the key is never stored).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "training policies"

    def __str__(self) -> str:
        return f"training policy of {self.project}"

    @property
    def judge_names(self) -> list[str]:
        """The chosen judges, in the order written."""
        return [name.strip() for name in (self.judges or "").split(",") if name.strip()]
