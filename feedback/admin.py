"""Django admin for every feedback model; snapshots show their weights and the rule behind them."""

from __future__ import annotations

from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import path

from feedback.models import (
    Comparison,
    ComparisonItem,
    ComparisonVote,
    DatasetSnapshot,
    Generation,
    ImportBatch,
    Job,
    Prompt,
    Vote,
)
from feedback.services import jobs
from projects.selectors import resolve_project


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ("id", "__str__", "created_at")
    search_fields = ("content_sha256",)
    readonly_fields = ("content_sha256", "created_at")


class VoteInline(admin.TabularInline):
    model = Vote
    extra = 0
    fields = ("annotator", "external_user_id", "desirable", "weight", "comment", "source", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("annotator",)


@admin.register(Generation)
class GenerationAdmin(admin.ModelAdmin):
    list_display = ("id", "prompt", "short_completion", "source", "model_version", "votes_wanted", "created_at")
    list_filter = ("source",)
    search_fields = ("external_id", "completion")
    raw_id_fields = ("prompt", "model_version", "claimed_by")
    readonly_fields = ("completion_sha256", "created_at")
    inlines = [VoteInline]
    actions = ["double_rate", "single_rate"]

    @admin.action(description="Ask for 2 votes on the selected items (to measure agreement)")
    def double_rate(self, request, queryset):
        updated = queryset.update(votes_wanted=2)
        self.message_user(request, f"{updated} items will be rated by two annotators.", messages.SUCCESS)

    @admin.action(description="Back to the default number of votes")
    def single_rate(self, request, queryset):
        updated = queryset.update(votes_wanted=None)
        self.message_user(request, f"{updated} items use the default number of votes again.", messages.SUCCESS)

    @admin.display(description="completion")
    def short_completion(self, generation: Generation) -> str:
        return generation.completion[:80]


@admin.register(Vote)
class VoteAdmin(admin.ModelAdmin):
    list_display = ("id", "generation", "annotator", "external_user_id", "desirable", "weight", "source", "created_at")
    list_filter = ("desirable", "source")
    search_fields = ("external_user_id", "annotator__username")
    raw_id_fields = ("generation", "annotator")
    date_hierarchy = "created_at"


@admin.register(ImportBatch)
class ImportBatchAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "filename",
        "format",
        "n_lines",
        "n_generations_created",
        "n_votes_created",
        "n_votes_existing",
        "created_at",
    )
    readonly_fields = [field.name for field in ImportBatch._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # imports come in through the command or the API, which validate the file


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "kind", "status", "progress", "filename", "created_at", "finished_at")
    list_filter = ("kind", "status")
    readonly_fields = [field.name for field in Job._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False  # jobs come from uploads, the snapshot button, the API and the commands


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "created_at",
        "n_desirable",
        "n_undesirable",
        "n_holdout",
        "n_ties_dropped",
        "desirable_weight",
        "undesirable_weight",
        "weight_rule",
    )
    # Snapshots are immutable: every field is read-only, and they are created only by the button.
    readonly_fields = [field.name for field in DatasetSnapshot._meta.fields]
    change_list_template = "admin/feedback/datasetsnapshot/change_list.html"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        return [
            path(
                "create/", self.admin_site.admin_view(self.create_snapshot_view), name="feedback_datasetsnapshot_create"
            ),
        ] + super().get_urls()

    def create_snapshot_view(self, request):
        if request.method != "POST":
            return redirect("admin:feedback_datasetsnapshot_changelist")
        if not request.user.has_perm("feedback.add_datasetsnapshot") and not request.user.is_superuser:
            messages.error(request, "You may not create snapshots.")
            return redirect("admin:feedback_datasetsnapshot_changelist")
        # Cut by a worker, like every snapshot: tens of thousands of votes take longer than a request may.
        job = jobs.create_snapshot_job(project=resolve_project(None), user=request.user)
        messages.info(request, f"Snapshot job {job.pk} queued: its page shows the weights when it is done.")
        return redirect("feedback:job", job_id=job.pk)


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    """Blind comparisons are started from the compare page (admins) or by the gate; here they are read."""

    list_display = ("id", "project", "version_a", "version_b", "requested_by", "n_identical", "created_at", "closed_at")
    list_filter = ("project",)
    raw_id_fields = ("version_a", "version_b", "requested_by")
    readonly_fields = ("created_at",)


class ComparisonVoteInline(admin.TabularInline):
    model = ComparisonVote
    extra = 0
    fields = ("annotator", "choice", "created_at")
    readonly_fields = ("created_at",)
    raw_id_fields = ("annotator",)


@admin.register(ComparisonItem)
class ComparisonItemAdmin(admin.ModelAdmin):
    list_display = ("id", "comparison", "prompt_sha256", "created_at")
    raw_id_fields = ("comparison", "left_output", "right_output", "claimed_by")
    readonly_fields = ("created_at",)
    inlines = [ComparisonVoteInline]
