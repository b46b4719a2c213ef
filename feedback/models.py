"""Prompts, generations, votes and the immutable dataset snapshots cut from them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Prompt(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="prompts")
    # A plain string, or a list of chat messages [{"role": ..., "content": ...}, ...].
    content = models.JSONField()
    # sha256 of the canonical JSON of `content`: the same prompt imported twice into a project is one row.
    content_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "content_sha256"], name="one_prompt_per_project_content"),
        ]

    @property
    def is_chat(self) -> bool:
        return isinstance(self.content, list)

    def __str__(self) -> str:
        text = (
            self.content
            if isinstance(self.content, str)
            else (self.content[-1].get("content", "") if self.content else "")
        )
        return text[:80]


class Generation(models.Model):
    # The prompt's project, repeated here so that every lookup by id or external id is scoped by
    # one indexed column.
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="generations")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="generations")
    completion = models.TextField()
    completion_sha256 = models.CharField(max_length=64)
    # Free-text origin ("import:file.jsonl", "api", ...); model_version is set when Prospect generated it.
    source = models.CharField(max_length=200, blank=True)
    model_version = models.ForeignKey(
        "training.ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="generations"
    )
    # Unique within the project (the product app's own id for the item).
    external_id = models.CharField(max_length=200, null=True, blank=True)
    # How many independent votes this item should get; null means settings.VOTES_PER_ITEM.
    # Raising it on a slice of items double-rates that slice for measuring agreement.
    votes_wanted = models.PositiveSmallIntegerField(null=True, blank=True)
    # A short lease so that two annotators working at once are not served the same item.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prompt", "completion_sha256"], name="one_generation_per_prompt_completion"
            ),
            models.UniqueConstraint(
                fields=["project", "external_id"],
                condition=Q(external_id__isnull=False),
                name="one_generation_per_project_external_id",
            ),
        ]

    def __str__(self) -> str:
        return f"generation {self.pk}"


class Vote(models.Model):
    generation = models.ForeignKey(Generation, on_delete=models.CASCADE, related_name="votes")
    # Who cast it: a signed-in annotator, or an API client (the key) — for itself or for one of its
    # own end users (external_user_id, unique per client) — or an import (external_user_id alone).
    # Indexed in Meta.indexes, without their NULLs: most votes have one of the two empty, and every
    # index entry is work on the busiest write path (one API vote per end-user click).
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="votes",
        db_index=False,
    )
    api_client = models.ForeignKey(
        "projects.ApiClient",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="votes",
        db_index=False,
    )
    external_user_id = models.CharField(max_length=200, null=True, blank=True)
    desirable = models.BooleanField()
    # Scored imports weight a vote by its distance from the threshold; thumbs are 1.
    weight = models.FloatField(default=1.0)
    comment = models.TextField(blank=True)
    source = models.CharField(max_length=50, default="ui")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        # Partial: "annotator_id = X" (and the foreign key's own lookups) imply NOT NULL, so PostgreSQL
        # uses them for every query the plain index served. A key's id is never searched with LIKE, so
        # PostgreSQL's second, varchar_pattern_ops index on a character foreign key is not made either.
        indexes = [
            models.Index(fields=["annotator"], condition=Q(annotator__isnull=False), name="vote_annotator"),
            models.Index(fields=["api_client"], condition=Q(api_client__isnull=False), name="vote_api_client"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["generation", "annotator"], condition=Q(annotator__isnull=False), name="one_vote_per_annotator"
            ),
            # An end user is one client's: another key naming the same id is another person.
            models.UniqueConstraint(
                fields=["generation", "api_client", "external_user_id"],
                condition=Q(api_client__isnull=False, external_user_id__isnull=False),
                name="one_vote_per_client_end_user",
            ),
            models.UniqueConstraint(
                fields=["generation", "api_client"],
                condition=Q(api_client__isnull=False, external_user_id__isnull=True),
                name="one_vote_per_api_client",
            ),
            models.UniqueConstraint(
                fields=["generation", "external_user_id"],
                condition=Q(api_client__isnull=True, external_user_id__isnull=False),
                name="one_vote_per_imported_user",
            ),
        ]


class ImportBatch(models.Model):
    """One accepted import file. Rejected files leave no row (the import is all-or-nothing)."""

    class Format(models.TextChoices):
        KTO = "kto", "KTO unpaired {prompt, completion, label}"
        PAIRED = "paired", "Preference pairs {prompt, chosen, rejected}"
        HH = "hh", "Anthropic HH transcripts {chosen, rejected}"
        SCORED = "scored", "Scored {prompt, completion, score} with a threshold"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="import_batches")
    filename = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=20, choices=Format.choices)
    threshold = models.FloatField(null=True, blank=True)
    n_lines = models.PositiveIntegerField(default=0)
    n_prompts_created = models.PositiveIntegerField(default=0)
    n_generations_created = models.PositiveIntegerField(default=0)
    n_votes_created = models.PositiveIntegerField(default=0)
    # Votes already present from an earlier import of the same file: re-importing adds nothing.
    n_votes_existing = models.PositiveIntegerField(default=0)
    n_dropped_at_threshold = models.PositiveIntegerField(default=0)
    # on_invalid="skip": lines (or sides of a pair) left out, and the file listing each with its reason.
    n_skipped = models.PositiveIntegerField(default=0)
    skipped_report = models.CharField(max_length=1000, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "import batches"

    def __str__(self) -> str:
        return f"import {self.pk} ({self.filename}, {self.format})"

    def summary(self) -> dict:
        """What the API answers and the command prints for an accepted import."""
        return {
            "sha256": self.sha256,
            "format": self.format,
            "lines": self.n_lines,
            "prompts_created": self.n_prompts_created,
            "generations_created": self.n_generations_created,
            "votes_created": self.n_votes_created,
            "votes_existing": self.n_votes_existing,
            "dropped_at_threshold": self.n_dropped_at_threshold,
            "skipped": self.n_skipped,
            "skipped_report": self.skipped_report or None,
        }


class DatasetSnapshot(models.Model):
    """An immutable KTO dataset: one JSONL file plus its hash, counts and the λ weights chosen."""

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="snapshots")
    path = models.CharField(max_length=1000)
    sha256 = models.CharField(max_length=64)
    # Counts of the train split: the λ weights balance exactly what the trainer sees.
    n_desirable = models.PositiveIntegerField(default=0)
    n_undesirable = models.PositiveIntegerField(default=0)
    n_train = models.PositiveIntegerField(default=0)
    n_holdout = models.PositiveIntegerField(default=0)
    n_ties_dropped = models.PositiveIntegerField(default=0)
    n_votes = models.PositiveIntegerField(default=0)
    desirable_weight = models.FloatField(default=1.0)
    undesirable_weight = models.FloatField(default=1.0)
    weight_rule = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    # The highest vote id included: "new votes since the last snapshot" counts from here.
    last_vote_id = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"snapshot {self.pk} ({self.n_desirable}D/{self.n_undesirable}U)"


class Comparison(models.Model):
    """A blind pairwise comparison of two model versions on their held-out outputs.

    Started by the evaluation gate (the pairwise judge: candidate vs active, requested_by empty)
    or by a project admin on the compare page (any two versions). The pair is stored in a fixed
    order (version_a has the smaller id) so the same two versions always share one comparison,
    whichever was picked as A; who "wins" is read from the votes for either side.
    """

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="comparisons")
    version_a = models.ForeignKey("training.ModelVersion", on_delete=models.CASCADE, related_name="+")
    version_b = models.ForeignKey("training.ModelVersion", on_delete=models.CASCADE, related_name="+")
    # Empty: the gate started it (a promotion waits on it, so its items are served first).
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Held-out prompts on which both versions answered exactly alike: no item (nothing to choose).
    n_identical = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set once the judge decided (or an admin stopped it): its items are no longer served.
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["version_a", "version_b"], name="one_comparison_per_version_pair"),
            models.CheckConstraint(condition=Q(version_a__lt=models.F("version_b")), name="comparison_pair_in_order"),
        ]

    def __str__(self) -> str:
        return f"comparison {self.pk} ({self.version_a_id} vs {self.version_b_id})"


class ComparisonItem(models.Model):
    """One held-out prompt answered by both versions, shown blind with the sides drawn at random.

    The two outputs are the gate's stored greedy outputs (training.HeldoutOutput); which one is
    on the left was drawn once when the item was created and is stored, so every annotator sees
    the same item the same way round and the vote can be read back to a version.
    """

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="items")
    prompt_sha256 = models.CharField(max_length=64)
    left_output = models.ForeignKey("training.HeldoutOutput", on_delete=models.CASCADE, related_name="+")
    right_output = models.ForeignKey("training.HeldoutOutput", on_delete=models.CASCADE, related_name="+")
    # A short lease, as on generations: two annotators working at once are not served the same item.
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "prompt_sha256"], name="one_comparison_item_per_prompt"),
        ]

    def __str__(self) -> str:
        return f"comparison item {self.pk}"


class ComparisonVote(models.Model):
    """An annotator's answer to "which is better?" on one item: the left output, the right one, or a tie."""

    class Choice(models.TextChoices):
        LEFT = "left", "left is better"
        RIGHT = "right", "right is better"
        TIE = "tie", "about the same"

    item = models.ForeignKey(ComparisonItem, on_delete=models.CASCADE, related_name="votes")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="comparison_votes")
    choice = models.CharField(max_length=5, choices=Choice.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "annotator"], name="one_comparison_vote_per_annotator"),
        ]

    def __str__(self) -> str:
        return f"{self.choice} on comparison item {self.item_id}"


class Job(models.Model):
    """Long work done by a Celery worker, not inside a web request: an import or a snapshot.

    `status` is the source of truth: a task delivered twice finds the job no longer queued and
    does nothing. The worker writes `progress` as it goes; on success `result` holds the summary
    (what the API answered before jobs), on failure `errors` holds the line-numbered errors.
    """

    class Kind(models.TextChoices):
        IMPORT = "import", "Import a feedback file"
        SNAPSHOT = "snapshot", "Snapshot the votes"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    # The arguments of the service call (format, threshold, on_invalid; holdout, mode, seed ...).
    params = models.JSONField(default=dict, blank=True)
    # Imports: the uploaded file, streamed to disk by the web process, read by the worker.
    upload_path = models.CharField(max_length=1000, blank=True)
    filename = models.CharField(max_length=500, blank=True)
    upload_bytes = models.BigIntegerField(default=0)
    # 0..1; the share of the file read (imports) or of the work done (snapshots).
    progress = models.FloatField(default=0.0)
    result = models.JSONField(null=True, blank=True)
    # [{"line": N or null, "field": name or null, "detail": text}, ...]
    errors = models.JSONField(default=list, blank=True)
    import_batch = models.ForeignKey(ImportBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_client = models.ForeignKey(
        "projects.ApiClient", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # When the message reached the broker (empty: not yet, the dispatcher sends it again).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} job {self.pk} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.SUCCEEDED, self.Status.FAILED)
