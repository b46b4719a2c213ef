"""Admin for runs, versions and the retraining policy. State changes go through training.runs
and training.registry,
so the admin cannot break the one-active-version rule or the run state machine."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from training import policy, registry, runs
from training.judges import JUDGES
from training.models import ModelVersion, TrainingPolicy, TrainingRun


class TrainingPolicyForm(forms.ModelForm):
    """The policy with its judges as checkboxes (stored comma-separated, in JUDGES order)."""

    judges = forms.MultipleChoiceField(
        choices=[(name, name) for name in JUDGES],
        widget=forms.CheckboxSelectMultiple,
        help_text=TrainingPolicy._meta.get_field("judges").help_text,
    )

    class Meta:
        model = TrainingPolicy
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["judges"] = self.instance.judge_names

    def clean_judges(self) -> str:
        return ",".join(self.cleaned_data["judges"])


@admin.register(TrainingPolicy)
class TrainingPolicyAdmin(admin.ModelAdmin):
    fieldsets = (
        ("Scheduling", {"fields": ("enabled", "min_new_votes", "cooldown_seconds")}),
        (
            "Training config",
            {
                "fields": (
                    "base_model",
                    "lora",
                    "loss",
                    "beta",
                    "learning_rate",
                    "num_train_epochs",
                    "max_steps",
                    "per_device_train_batch_size",
                    "gradient_accumulation_steps",
                    "max_length",
                    "time_limit_seconds",
                    "seed",
                )
            },
        ),
        ("Class weights (λ)", {"fields": ("lambda_mode", "target_ratio", "desirable_weight", "undesirable_weight")}),
        (
            "Evaluation gate",
            {
                "fields": (
                    "judges",
                    "confidence",
                    "holdout",
                    "min_holdout_examples",
                    "promote_margin",
                    "judge_prompts",
                ),
                "description": "Every chosen judge must say the candidate is better for it to be promoted.",
            },
        ),
        ("Canary on live traffic", {"fields": ("canary_share", "canary_min_votes", "canary_max_votes")}),
        (
            "LLM judge",
            {"fields": ("llm_judge_url", "llm_judge_model", "llm_judge_api_key_env", "llm_judge_prompt")},
        ),
    )
    form = TrainingPolicyForm

    def has_add_permission(self, request) -> bool:
        # One row only; it is created from settings on first use.
        return not TrainingPolicy.objects.exists()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        policy.get_policy()  # so the single row is there to edit
        return super().changelist_view(request, extra_context)


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "progress", "snapshot", "base_version", "created_at", "finished_at")
    list_filter = ("status",)
    actions = ("cancel_selected",)
    # The run row is written by the runner and the services only: read-only here.
    readonly_fields = [f.name for f in TrainingRun._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Cancel selected runs")
    def cancel_selected(self, request, queryset):
        for run in queryset:
            try:
                runs.cancel_run(run)
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.WARNING)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "status",
        "evaluation_state",
        "canary_share",
        "is_adapter",
        "parent",
        "created_at",
        "activated_at",
    )
    list_filter = ("status", "is_adapter")
    actions = ("promote_selected", "rollback_active", "reject_selected")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Promote (make active)")
    def promote_selected(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to promote.", messages.ERROR)
            return
        version = registry.promote(queryset.get(), reason=f"promoted by {request.user} in the admin")
        self.message_user(request, f"{version.name} is now active.")

    @admin.action(description="Roll back the active version")
    def rollback_active(self, request, queryset):
        try:
            version = registry.rollback()
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return
        self.message_user(request, f"Rolled back: {version.name} is active again.")

    @admin.action(description="Reject selected")
    def reject_selected(self, request, queryset):
        for version in queryset:
            try:
                registry.reject(version, f"rejected by {request.user} in the admin")
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)
