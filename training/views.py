"""Staff pages of the training loop: runs, live run progress, model versions, retrain now.

Views stay thin: reads go through training.selectors, writes through training.runs and training.registry. Every view here is staff only; a signed-in annotator gets 403, an anonymous
visitor is sent to the login page.
"""
from __future__ import annotations

import json
from functools import wraps

from django import forms
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from feedback.models import DatasetSnapshot
from training import policy, registry, selectors
from training.models import ModelVersion, TrainingPolicy, TrainingRun
from training.runs import cancel_run, start_run

RUNS_PER_PAGE = 50


def staff_required(view):
    """Like admin's staff_member_required, but a signed-in non-staff user gets 403, not a login form."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapper


class RetrainForm(forms.Form):
    """'Retrain now': optional snapshot / base version, and overrides of the default training config.

    Blank fields keep the policy's default (policy.default_training_config()), so the form only
    sends what the admin changed; policy.resolve_training_config validates the overrides.
    """

    snapshot = forms.ModelChoiceField(
        queryset=DatasetSnapshot.objects.all(), required=False,
        empty_label="New snapshot of all votes now",
    )
    base_version = forms.ModelChoiceField(
        queryset=ModelVersion.objects.exclude(status=ModelVersion.Status.REJECTED), required=False,
        empty_label="The active version",
    )
    beta = forms.FloatField(required=False, min_value=1e-6, max_value=100.0, label="β")
    learning_rate = forms.FloatField(required=False, min_value=1e-12, max_value=1.0, label="Learning rate")
    num_train_epochs = forms.FloatField(required=False, min_value=0.01, max_value=1000.0, label="Epochs")
    max_steps = forms.IntegerField(required=False, min_value=1, label="Max steps")
    lora = forms.TypedChoiceField(
        required=False, label="LoRA",
        choices=[("", "default"), ("1", "LoRA adapter"), ("0", "full weights")],
        coerce=lambda value: value == "1", empty_value=None,
    )
    loss = forms.ChoiceField(required=False, choices=[("", "default")] + list(TrainingPolicy.Loss.choices),
                             label="Variant")
    lambda_mode = forms.ChoiceField(required=False, choices=[("", "default")] + list(TrainingPolicy.LambdaMode.choices),
                                    label="λ")
    desirable_weight = forms.FloatField(required=False, min_value=1e-6, label="λ_D (manual λ)")
    undesirable_weight = forms.FloatField(required=False, min_value=1e-6, label="λ_U (manual λ)")

    OVERRIDES = ("beta", "learning_rate", "num_train_epochs", "max_steps", "lora", "loss", "lambda_mode",
                 "desirable_weight", "undesirable_weight")

    def __init__(self, *args, defaults: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # Show what a blank field means: the policy's current value.
        for name, value in (defaults or {}).items():
            if name in self.fields and isinstance(self.fields[name], (forms.FloatField, forms.IntegerField)):
                self.fields[name].widget.attrs["placeholder"] = "default: none" if value is None else f"default: {value:g}"

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("lambda_mode") == TrainingPolicy.LambdaMode.MANUAL:
            for name in ("desirable_weight", "undesirable_weight"):
                if cleaned.get(name) is None:
                    self.add_error(name, "required when λ is manual")
        return cleaned

    def config_overrides(self) -> dict:
        return {name: self.cleaned_data[name] for name in self.OVERRIDES
                if self.cleaned_data.get(name) not in (None, "")}

    def add_service_error(self, exc: Exception) -> None:
        """Show a service's refusal on the field it names, else at the top of the form."""
        if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
            for name, errors in exc.message_dict.items():
                self.add_error(name if name in self.fields else None,
                               [f"{name}: {message}" if name not in self.fields else message for message in errors])
        else:
            self.add_error(None, _error_text(exc))


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return str(exc)


@require_GET
@staff_required
def runs(request):
    return render(request, "training/runs.html", {
        "runs": selectors.run_list(limit=RUNS_PER_PAGE),
        "active_version": selectors.active_version(),
    })


@require_GET
@staff_required
def run_detail(request, run_id: int):
    run = get_object_or_404(TrainingRun.objects.select_related("snapshot", "base_version"), pk=run_id)
    return render(request, "training/run_detail.html", {
        "run": run,
        "progress": selectors.run_progress(run),
    })


@require_GET
@staff_required
def run_progress(request, run_id: int):
    run = get_object_or_404(TrainingRun, pk=run_id)
    return JsonResponse(selectors.run_progress(run))


@require_POST
@staff_required
def cancel(request, run_id: int):
    run = get_object_or_404(TrainingRun, pk=run_id)
    try:
        cancel_run(run)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not cancel run {run.pk}: {_error_text(exc)}")
    else:
        messages.success(request, f"Run {run.pk} is being cancelled.")
    return redirect("training:run_detail", run_id=run.pk)


@staff_required
def retrain(request):
    defaults = policy.default_training_config()
    if request.method == "POST":
        form = RetrainForm(request.POST, defaults=defaults)
        if form.is_valid():
            try:
                run = start_run(
                    snapshot=form.cleaned_data["snapshot"],
                    config=form.config_overrides(),
                    base_version=form.cleaned_data["base_version"],
                    requested_by=request.user,
                )
            except (ValueError, ValidationError) as exc:
                form.add_service_error(exc)
            else:
                messages.success(request, f"Run {run.pk} queued.")
                return redirect("training:run_detail", run_id=run.pk)
    else:
        form = RetrainForm(defaults=defaults)
    return render(request, "training/retrain.html", {
        "form": form,
        "defaults": defaults,
        "active_version": selectors.active_version(),
    })


# The columns of the Models page, in this order, when any version has them: the gate's judge
# (demo accuracy) and the holdout numbers of `python -m training.kto evaluate`. Everything else a
# version's metrics hold (paths, counts, the gate's full record) is under its "all metrics".
METRIC_COLUMNS = (
    "demo_accuracy",
    "holdout.loss",
    "holdout.reward_accuracy",
    "holdout.reward_margin",
    "holdout.reward_desirable",
    "holdout.reward_undesirable",
    "holdout.z0",
    "holdout.n_examples",
)


@require_GET
@staff_required
def versions(request):
    all_versions = list(selectors.version_list())
    flat = {version.pk: _flatten_metrics(version.metrics or {}) for version in all_versions}
    # Metrics side by side: the key columns any version has.
    metric_names = [name for name in METRIC_COLUMNS if any(name in metrics for metrics in flat.values())]
    rows = [
        {"version": version, "metrics": [_format_metric(flat[version.pk].get(name)) for name in metric_names],
         "all_metrics": json.dumps(version.metrics or {}, indent=2, sort_keys=True, default=str)}
        for version in all_versions
    ]
    return render(request, "training/versions.html", {
        "rows": rows,
        "metric_names": metric_names,
        "active_version": selectors.active_version(),
    })


def _flatten_metrics(metrics: dict) -> dict:
    """{"holdout": {"loss": 0.4}, "demo_accuracy": 0.6} → {"holdout.loss": 0.4, "demo_accuracy": 0.6}."""
    flat = {}
    for name, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": v for inner, v in value.items() if _is_scalar(v)})
        elif _is_scalar(value):
            flat[name] = value
    return flat


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _format_metric(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@require_POST
@staff_required
def promote(request, version_id: int):
    version = get_object_or_404(ModelVersion, pk=version_id)
    reason = request.POST.get("reason", "").strip() or f"promoted by {request.user.get_username()}"
    try:
        registry.promote(version, reason=reason)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not promote {version.name}: {_error_text(exc)}")
    else:
        messages.success(request, f"{version.name} is now active.")
    return redirect("training:versions")


@require_POST
@staff_required
def rollback(request):
    try:
        restored = registry.rollback()
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not roll back: {_error_text(exc)}")
    else:
        name = getattr(restored, "name", None)
        messages.success(request, f"Rolled back; {name} is active again." if name else "Rolled back.")
    return redirect("training:versions")


@require_POST
@staff_required
def reject(request, version_id: int):
    version = get_object_or_404(ModelVersion, pk=version_id)
    reason = request.POST.get("reason", "").strip() or f"rejected by {request.user.get_username()}"
    try:
        registry.reject(version, reason)
    except (ValueError, ValidationError) as exc:
        messages.error(request, f"Could not reject {version.name}: {_error_text(exc)}")
    else:
        messages.success(request, f"{version.name} rejected.")
    return redirect("training:versions")
