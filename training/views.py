"""Staff pages of the training loop: runs, live run progress, model versions, retrain now.

Views stay thin: reads go through training.selectors, writes through training.runs and training.registry. Every view here needs its permission in the page's project (projects.roles); a signed-in annotator gets 403, an anonymous
visitor is sent to the login page.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from feedback import comparison_selectors
from feedback.models import DatasetSnapshot
from feedback.services.comparisons import start_comparison
from projects import roles
from projects.selectors import has_project_perm
from projects.web import project_permission_required
from training import policy, presentation, registry, selectors, version_selectors
from training.judges import pairwise
from training.models import ModelVersion, TrainingPolicy, TrainingRun
from training.runs import cancel_run, queue_run_after_snapshot, start_run

RUNS_PER_PAGE = 50


view_runs_required = project_permission_required(roles.VIEW_RUNS, "project admins only")
start_run_required = project_permission_required(roles.START_RUN, "project admins only")
cancel_run_required = project_permission_required(roles.CANCEL_RUN, "project admins only")
view_models_required = project_permission_required(roles.VIEW_MODELS, "project admins only")
change_models_required = project_permission_required(roles.CHANGE_MODELS, "project admins only")


class RetrainForm(forms.Form):
    """'Retrain now': optional snapshot / base version, and overrides of the default training config.

    Blank fields keep the policy's default (policy.default_training_config()), so the form only
    sends what the admin changed; policy.resolve_training_config validates the overrides.
    """

    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.all(),
        required=False,
        empty_label="New snapshot of all votes (cut by a worker, then the run starts)",
    )
    base_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.exclude(status=ModelVersion.Status.REJECTED),
        required=False,
        empty_label="The active version",
    )
    beta = forms.FloatField(required=False, min_value=1e-6, max_value=100.0, label="β")
    learning_rate = forms.FloatField(required=False, min_value=1e-12, max_value=1.0, label="Learning rate")
    num_train_epochs = forms.FloatField(required=False, min_value=0.01, max_value=1000.0, label="Epochs")
    max_steps = forms.IntegerField(required=False, min_value=1, label="Max steps")
    lora = forms.TypedChoiceField(
        required=False,
        label="LoRA",
        choices=[("", "default"), ("1", "LoRA adapter"), ("0", "full weights")],
        coerce=lambda value: value == "1",
        empty_value=None,
    )
    loss = forms.ChoiceField(
        required=False, choices=[("", "default")] + list(TrainingPolicy.Loss.choices), label="Variant"
    )
    lambda_mode = forms.ChoiceField(
        required=False, choices=[("", "default")] + list(TrainingPolicy.LambdaMode.choices), label="λ"
    )
    desirable_weight = forms.FloatField(required=False, min_value=1e-6, label="λ_D (manual λ)")
    undesirable_weight = forms.FloatField(required=False, min_value=1e-6, label="λ_U (manual λ)")

    OVERRIDES = (
        "beta",
        "learning_rate",
        "num_train_epochs",
        "max_steps",
        "lora",
        "loss",
        "lambda_mode",
        "desirable_weight",
        "undesirable_weight",
    )

    def __init__(self, *args, defaults: dict | None = None, project=None, **kwargs):
        super().__init__(*args, **kwargs)
        if project is not None:
            # Another project's snapshots and versions are not choices (a posted id is "not one of the choices").
            self.fields["snapshot"].queryset = DatasetSnapshot.objects.filter(project=project)
            self.fields["base_version"].queryset = ModelVersion.objects.filter(project=project).exclude(
                status=ModelVersion.Status.REJECTED
            )
        # Show what a blank field means: the policy's current value.
        for name, value in (defaults or {}).items():
            if name in self.fields and isinstance(self.fields[name], (forms.FloatField, forms.IntegerField)):
                self.fields[name].widget.attrs["placeholder"] = (
                    "default: none" if value is None else f"default: {value:g}"
                )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("lambda_mode") == TrainingPolicy.LambdaMode.MANUAL:
            for name in ("desirable_weight", "undesirable_weight"):
                if cleaned.get(name) is None:
                    self.add_error(name, "required when λ is manual")
        return cleaned

    def config_overrides(self) -> dict:
        return {
            name: self.cleaned_data[name] for name in self.OVERRIDES if self.cleaned_data.get(name) not in (None, "")
        }

    def add_service_error(self, exc: Exception) -> None:
        """Show a service's refusal on the field it names, else at the top of the form."""
        if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
            for name, errors in exc.message_dict.items():
                self.add_error(
                    name if name in self.fields else None,
                    [f"{name}: {message}" if name not in self.fields else message for message in errors],
                )
        else:
            self.add_error(None, _error_text(exc))


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


@require_GET
@view_runs_required
def runs(request):
    return render(
        request,
        "training/runs.html",
        {
            "runs": selectors.run_list(limit=RUNS_PER_PAGE, project=request.project),
            "active_version": selectors.active_version(request.project),
        },
    )


@require_GET
@view_runs_required
def run_detail(request, run_id: int):
    run = get_object_or_404(
        TrainingRun.objects.select_related("snapshot", "base_version", "requested_by"),
        pk=run_id,
        project=request.project,
    )
    progress = _progress_with_phase(run)
    version_metrics = (progress.get("version") or {}).get("metrics") or {}
    return render(
        request,
        "training/run_detail.html",
        {
            "run": run,
            "progress": progress,
            "phases": presentation.PHASES,
            "config_rows": _config_rows(run.config),
            "judge_verdicts": presentation.judge_verdicts(version_metrics),
            "canary": presentation.canary_numbers(version_metrics),
        },
    )


@require_GET
@view_runs_required
def run_progress(request, run_id: int):
    run = get_object_or_404(TrainingRun, pk=run_id, project=request.project)
    return JsonResponse(_progress_with_phase(run))


def _progress_with_phase(run: TrainingRun) -> dict:
    """The selector's picture of the run plus what the page shows in words: phase and step lines."""
    progress = selectors.run_progress(run)
    rows = TrainingRun.objects.filter(pk=run.pk).values_list("metrics", flat=True).first()
    progress["phase"] = presentation.run_phase(progress, run.config or {})
    progress["step_lines"] = presentation.step_lines(rows, progress.get("total_steps"))
    # The training steps first (what an admin watches), then the engine's own output.
    engine_output = (progress.get("log_tail") or "").strip()
    progress["log_text"] = "\n".join(
        progress["step_lines"] + (["--- engine output ---", engine_output] if engine_output else [])
    )
    return progress


# Human labels of the training config keys (retrain form defaults, run page).
CONFIG_LABELS = {
    "base_model": "Base model (when none is active)",
    "lora": "LoRA adapter",
    "beta": "β",
    "learning_rate": "Learning rate",
    "num_train_epochs": "Epochs",
    "max_steps": "Max steps",
    "per_device_train_batch_size": "Batch size per device",
    "gradient_accumulation_steps": "Gradient accumulation",
    "max_length": "Max length (tokens)",
    "loss": "Variant",
    "lambda_mode": "λ mode",
    "target_ratio": "Target D:U ratio",
    "desirable_weight": "λ_D (manual)",
    "undesirable_weight": "λ_U (manual)",
    "holdout": "Holdout share",
    "seed": "Seed",
    "promote_margin": "Auto-promote margin",
    "judges": "Judges",
    "judge_prompts": "Judge prompts",
    "confidence": "Gate confidence",
    "min_holdout_examples": "Min held-out examples",
    "canary_share": "Canary share",
    "canary_min_votes": "Canary min votes a side",
    "canary_max_votes": "Canary max votes a side",
    "llm_judge_url": "LLM judge URL",
    "llm_judge_model": "LLM judge model",
    "llm_judge_prompt": "LLM judge prompt",
    "llm_judge_api_key_env": "LLM judge key variable",
    "time_limit_seconds": "Time limit (s)",
}


def _config_rows(config: dict) -> list[tuple[str, str]]:
    def shown(value):
        if value is None or value == "":
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)

    known = [(CONFIG_LABELS[key], shown(config[key])) for key in CONFIG_LABELS if key in (config or {})]
    return known + [(key, shown(value)) for key, value in (config or {}).items() if key not in CONFIG_LABELS]


@require_POST
@cancel_run_required
def cancel(request, run_id: int):
    run = get_object_or_404(TrainingRun, pk=run_id, project=request.project)
    try:
        cancel_run(run)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not cancel run {run.pk}: {_error_text(exc)}")
    else:
        messages.success(request, f"Run {run.pk} is being cancelled.")
    return redirect("training:run_detail", run_id=run.pk)


@start_run_required
def retrain(request):
    defaults = policy.default_training_config(request.project)
    if request.method == "POST":
        form = RetrainForm(request.POST, defaults=defaults, project=request.project)
        if form.is_valid():
            arguments = {
                "config": form.config_overrides(),
                "base_version": form.cleaned_data["base_version"],
                "requested_by": request.user,
                "project": request.project,
            }
            try:
                if form.cleaned_data["snapshot"] is None:
                    # Cut by a worker, like every snapshot (too long for a request); the run starts
                    # there once it is cut, and the job page then moves on to the run's page.
                    job = queue_run_after_snapshot(**arguments)
                    messages.info(request, f"Snapshot job {job.pk} queued: the run starts once it is done.")
                    return redirect("feedback:job", job_id=job.pk)
                run = start_run(snapshot=form.cleaned_data["snapshot"], **arguments)
            except (ValueError, ValidationError) as exc:
                form.add_service_error(exc)
            else:
                # No flash: the run page itself says "queued", then follows the run live.
                return redirect("training:run_detail", run_id=run.pk)
    else:
        form = RetrainForm(defaults=defaults, project=request.project)
    return render(
        request,
        "training/retrain.html",
        {
            "form": form,
            "default_rows": _config_rows(defaults),
            "active_version": selectors.active_version(request.project),
        },
    )


@require_GET
@view_models_required
def versions(request):
    active = selectors.active_version(request.project)
    rows = []
    for version in selectors.version_list(request.project):
        flat = presentation.flatten_metrics(version.metrics)
        rows.append(
            {
                "version": version,
                "metrics": [presentation.format_metric(key, flat.get(key)) for key in presentation.TABLE_METRICS],
                "verdict": presentation.gate_verdict(version),
                "all_metrics": json.dumps(version.metrics or {}, indent=2, sort_keys=True, default=str),
                "can_promote": version.status in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.RETIRED),
                "can_reject": version.status in (ModelVersion.Status.CANDIDATE, ModelVersion.Status.RETIRED),
            }
        )
    labels = dict((key, label) for key, label, _ in presentation.METRICS)
    return render(
        request,
        "training/versions.html",
        {
            "rows": rows,
            "metric_labels": [labels[key] for key in presentation.TABLE_METRICS],
            "active_version": active,
            "rollback_target": version_selectors.rollback_target(active),
        },
    )


@require_GET
@view_models_required
def compare(request):
    """Two versions side by side: metric deltas, their outputs on the same held-out prompts, then on served ones."""
    all_versions = list(selectors.version_list(request.project))
    by_id = {str(version.pk): version for version in all_versions}
    active = selectors.active_version(request.project)
    a = by_id.get(request.GET.get("a", "")) or active or (all_versions[1] if len(all_versions) > 1 else None)
    b = by_id.get(request.GET.get("b", "")) or next((v for v in all_versions if v != a), None)
    context = {"versions": all_versions, "a": a, "b": b}
    if a is not None and b is not None:
        up_a, n_a = version_selectors.thumbs_up_share(a)
        up_b, n_b = version_selectors.thumbs_up_share(b)
        context.update(
            {
                "deltas": presentation.metric_deltas(a.metrics, b.metrics),
                "verdict_a": presentation.gate_verdict(a),
                "verdict_b": presentation.gate_verdict(b),
                "thumbs": {"a": (up_a, n_a), "b": (up_b, n_b)},
                "heldout_pairs": version_selectors.heldout_output_pairs(a, b),
                "pairs": version_selectors.shared_prompt_outputs(a, b),
            }
        )
    if a is not None and b is not None and a != b:
        comparison = comparison_selectors.comparison_between(a, b)
        context["blind"] = {
            "comparison": comparison,
            # B's win rate over A ("Δ is B − A" on this page), at the project's gate confidence.
            "rate": pairwise.comparison_win_rate(a, b, pairwise.confidence_of(policy.get_policy(request.project)))
            if comparison is not None
            else None,
            "can_start": has_project_perm(request.user, request.project, roles.CHANGE_MODELS),
        }
    return render(request, "training/compare.html", context)


@require_POST
@change_models_required
def start_blind_comparison(request):
    """Put two versions' held-out outputs in front of annotators as blind "which is better?" items."""
    a = get_object_or_404(ModelVersion, pk=_int_or_404(request.POST.get("a")), project=request.project)
    b = get_object_or_404(ModelVersion, pk=_int_or_404(request.POST.get("b")), project=request.project)
    try:
        comparison = start_comparison(a, b, requested_by=request.user)
    except ValueError as exc:
        messages.error(request, f"Could not start a blind comparison: {exc}")
    else:
        n_items = comparison.items.count()
        alike = f" ({comparison.n_identical} prompts answered alike get no item)" if comparison.n_identical else ""
        if n_items:
            messages.success(
                request, f"Blind comparison of {a.name} and {b.name}: {n_items} items for annotators{alike}."
            )
        else:
            messages.warning(
                request,
                f"No blind comparison items for {a.name} and {b.name}{alike}: the evaluation gate stores each "
                "version's outputs on the held-out prompts when it measures it; try again once both have them.",
            )
    return redirect(reverse("training:compare") + f"?a={a.pk}&b={b.pk}")


def _int_or_404(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise Http404("no such version") from None


@require_POST
@change_models_required
def promote(request, version_id: int):
    version = get_object_or_404(ModelVersion, pk=version_id, project=request.project)
    reason = request.POST.get("reason", "").strip() or f"promoted by {request.user.get_username()}"
    try:
        registry.promote(version, reason=reason)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not promote {version.name}: {_error_text(exc)}")
    else:
        messages.success(request, f"{version.name} is now active.")
    return redirect("training:versions")


@require_POST
@change_models_required
def rollback(request):
    try:
        restored = registry.rollback(request.project)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not roll back: {_error_text(exc)}")
    else:
        name = getattr(restored, "name", None)
        messages.success(request, f"Rolled back; {name} is active again." if name else "Rolled back.")
    return redirect("training:versions")


@require_POST
@change_models_required
def reject(request, version_id: int):
    version = get_object_or_404(ModelVersion, pk=version_id, project=request.project)
    reason = request.POST.get("reason", "").strip() or f"rejected by {request.user.get_username()}"
    try:
        registry.reject(version, reason)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not reject {version.name}: {_error_text(exc)}")
    else:
        messages.success(request, f"{version.name} rejected.")
    return redirect("training:versions")
