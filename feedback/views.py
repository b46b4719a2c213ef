"""Server-rendered pages: the annotation queue (annotators) and the feedback dashboard (staff)."""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from feedback import selectors, services
from feedback.permissions import annotator_required, staff_required
from feedback.services.votes import GenerationNotFound

# Skipped items are remembered per browser session, newest last; older ones fall off the end.
SESSION_SKIPPED = "feedback_skipped_generation_ids"
MAX_REMEMBERED_SKIPS = 200


def healthz(request):
    """Liveness probe; deliberately does no work (the web benchmark's no-op ceiling, too)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def home(request):
    if not request.user.is_authenticated:
        return redirect("login")
    if request.user.is_staff:
        return redirect("feedback:dashboard")
    if selectors.is_annotator(request.user):
        return redirect("feedback:annotate")
    raise PermissionDenied("this account has no role in the web interface (API only)")


class VoteForm(forms.Form):
    generation_id = forms.IntegerField(min_value=1)
    label = forms.ChoiceField(choices=[("up", "desirable"), ("down", "undesirable")])
    comment = forms.CharField(required=False, max_length=5000)


class SkipForm(forms.Form):
    generation_id = forms.IntegerField(min_value=1)


@require_GET
@annotator_required
def annotate(request):
    generation = services.claim_next_generation(request.user, request.session.get(SESSION_SKIPPED, []))
    return render(
        request,
        "feedback/annotate.html",
        {"generation": generation, "progress": selectors.queue_progress(request.user)},
    )


@require_POST
@annotator_required
def vote(request):
    form = VoteForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Vote not saved: {form.errors.as_text()}")
        return redirect("feedback:annotate")
    try:
        _, created = services.record_annotator_vote(
            request.user,
            form.cleaned_data["generation_id"],
            desirable=form.cleaned_data["label"] == "up",
            comment=form.cleaned_data["comment"],
        )
    except GenerationNotFound:
        messages.error(request, "That item no longer exists; here is the next one.")
        return redirect("feedback:annotate")
    if not created:
        messages.info(request, "You had already rated that item; your first vote stands.")
    return redirect("feedback:annotate")


@require_POST
@annotator_required
def skip(request):
    form = SkipForm(request.POST)
    if form.is_valid():
        generation_id = form.cleaned_data["generation_id"]
        skipped = [i for i in request.session.get(SESSION_SKIPPED, []) if i != generation_id] + [generation_id]
        request.session[SESSION_SKIPPED] = skipped[-MAX_REMEMBERED_SKIPS:]
        services.release_claim(request.user, generation_id)
    return redirect("feedback:annotate")


@require_POST
@annotator_required
def undo(request):
    generation = services.undo_last_vote(request.user)
    if generation is None:
        messages.info(request, "Nothing to undo.")
    else:
        messages.success(request, "Last vote undone: rate the item again.")
    return redirect("feedback:annotate")


def _bar_chart(points, bar_width: int = 24, gap: int = 6, plot_height: int = 100, label_height: int = 14) -> dict:
    """Geometry of a small inline SVG bar chart (no JavaScript, no chart library)."""
    peak = max((n for _, n in points), default=0)
    bars = []
    for index, (day, n) in enumerate(points):
        height = round(plot_height * n / peak) if peak else 0
        bars.append({"day": day, "n": n, "x": index * (bar_width + gap), "y": plot_height - height, "height": height})
    return {
        "bars": bars,
        "bar_width": bar_width,
        "width": max(1, len(points) * (bar_width + gap)),
        "height": plot_height + label_height,
        "plot_height": plot_height,
    }


class SnapshotForm(forms.Form):
    # Initial values: the settings (passed by the dashboard view).
    holdout = forms.FloatField(min_value=0, max_value=0.9)
    target_ratio = forms.FloatField(min_value=0.01)
    mode = forms.ChoiceField(choices=[("auto", "auto (paper Eq. 7)"), ("downside_first", "downside first")])


@require_GET
@staff_required
def dashboard(request):
    stats = selectors.dashboard_stats()
    snapshot_form = SnapshotForm(initial={"holdout": settings.SNAPSHOT_HOLDOUT, "target_ratio": round(settings.KTO_TARGET_RATIO, 4)})
    return render(
        request,
        "feedback/dashboard.html",
        {
            "stats": stats,
            "chart": _bar_chart(stats.votes_per_day),
            "snapshots": selectors.recent_snapshots(),
            "snapshot_form": snapshot_form,
        },
    )


@require_POST
@staff_required
def create_snapshot(request):
    form = SnapshotForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Snapshot not created: {form.errors.as_text()}")
        return redirect("feedback:dashboard")
    try:
        snapshot = services.create_snapshot(
            holdout=form.cleaned_data["holdout"], target_ratio=form.cleaned_data["target_ratio"], mode=form.cleaned_data["mode"]
        )
    except services.SnapshotRefused as exc:
        messages.error(request, f"Snapshot refused: {exc}")
        return redirect("feedback:dashboard")
    messages.success(
        request,
        f"Snapshot {snapshot.pk}: {snapshot.n_desirable} desirable / {snapshot.n_undesirable} undesirable for training, "
        f"λ_D = {snapshot.desirable_weight:.4g}, λ_U = {snapshot.undesirable_weight:.4g} ({snapshot.weight_rule}).",
    )
    return redirect("feedback:dashboard")
