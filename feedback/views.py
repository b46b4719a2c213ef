"""Server-rendered pages: the annotation queue (annotators) and the feedback dashboard (staff)."""

from __future__ import annotations

import math

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_POST

from config.edge import MAX_DATABASE_ID, PayloadTooLarge
from feedback import comparison_selectors, selectors, services
from feedback.importers import FORMAT_CHOICES
from feedback.models import ComparisonItem, ComparisonVote
from feedback.permissions import annotator_required, dashboard_required, import_required, snapshot_required
from feedback.services import jobs
from feedback.services.comparisons import (
    ComparisonItemNotFound,
    next_annotation_item,
    record_comparison_vote,
    release_comparison_claim,
    undo_last_answer,
)
from feedback.services.votes import GenerationNotFound
from feedback.uploads import ImportUploadHandler, SavedUpload, claim_upload
from projects import roles
from projects.selectors import has_project_perm, projects_of
from projects.web import page_project

# Skipped items are remembered per browser session, newest last; older ones fall off the end.
SESSION_SKIPPED = "feedback_skipped_generation_ids"
SESSION_SKIPPED_COMPARISONS = "feedback_skipped_comparison_item_ids"
MAX_REMEMBERED_SKIPS = 200
# A comment the server refused (too long) comes back into the box instead of being lost.
SESSION_COMMENT_DRAFT = "feedback_comment_draft"
COMMENT_MAX_CHARS = 5000
THUMB = {"up": "👍", "down": "👎"}
# What the confirmation says after a "which is better?" answer (the page never names the versions).
CHOSEN = {"left": "left is better", "right": "right is better", "tie": "a tie"}
# The job page lists this many skipped lines; the download has them all.
SKIPPED_SHOWN = 50


def healthz(request):
    """Liveness probe; deliberately does no work (the web benchmark's no-op ceiling, too)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
def home(request):
    if not request.user.is_authenticated:
        return redirect("login")
    if not projects_of(request.user):
        raise PermissionDenied("this account has no role in any project (ask a project admin to add you)")
    project = page_project(request)
    if has_project_perm(request.user, project, roles.VIEW_DASHBOARD):
        return redirect("feedback:dashboard")
    if has_project_perm(request.user, project, roles.RATE):
        return redirect("feedback:annotate")
    raise PermissionDenied("this account has no role in this project")


class VoteForm(forms.Form):
    generation_id = forms.IntegerField(min_value=1, max_value=MAX_DATABASE_ID)
    label = forms.ChoiceField(choices=[("up", "desirable"), ("down", "undesirable")])
    comment = forms.CharField(required=False, max_length=COMMENT_MAX_CHARS)


class SkipForm(forms.Form):
    # One of the two: the output to rate on screen, or the "which is better?" item.
    generation_id = forms.IntegerField(min_value=1, max_value=MAX_DATABASE_ID, required=False)
    comparison_item_id = forms.IntegerField(min_value=1, max_value=MAX_DATABASE_ID, required=False)

    def clean(self):
        cleaned = super().clean()
        if (cleaned.get("generation_id") is None) == (cleaned.get("comparison_item_id") is None):
            raise forms.ValidationError("send generation_id or comparison_item_id")
        return cleaned


class ComparisonVoteForm(forms.Form):
    item_id = forms.IntegerField(min_value=1, max_value=MAX_DATABASE_ID)
    choice = forms.ChoiceField(choices=ComparisonVote.Choice.choices)


def _remember_skip(request, key: str, item_id: int) -> None:
    skipped = [i for i in request.session.get(key, []) if i != item_id] + [item_id]
    request.session[key] = skipped[-MAX_REMEMBERED_SKIPS:]


@require_GET
@annotator_required
def annotate(request):
    item = next_annotation_item(
        request.user,
        request.project,
        skipped_generation_ids=request.session.get(SESSION_SKIPPED, []),
        skipped_item_ids=request.session.get(SESSION_SKIPPED_COMPARISONS, []),
    )
    comparison_item = item if isinstance(item, ComparisonItem) else None
    generation = None if comparison_item is not None else item
    draft = request.session.pop(SESSION_COMMENT_DRAFT, None)
    progress = selectors.queue_progress(request.user, request.project)
    comparison_progress = comparison_selectors.comparison_progress(request.user, request.project)
    done_today = progress.rated_today + comparison_progress.answered_today
    return render(
        request,
        "feedback/annotate.html",
        {
            "generation": generation,
            "comparison_item": comparison_item,
            "progress": progress,
            "comparison_progress": comparison_progress,
            "session_done": done_today,
            "session_total": done_today + progress.waiting + comparison_progress.waiting,
            "comment_draft": draft["comment"]
            if draft and generation and draft["generation_id"] == generation.pk
            else "",
            "comment_max_chars": COMMENT_MAX_CHARS,
        },
    )


@require_POST
@annotator_required
def compare_vote(request):
    form = ComparisonVoteForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Answer not saved: {form.errors.as_text()}")
        return redirect("feedback:annotate")
    choice = form.cleaned_data["choice"]
    try:
        _, created = record_comparison_vote(request.user, form.cleaned_data["item_id"], choice, request.project)
    except ComparisonItemNotFound:
        messages.error(request, "That comparison no longer exists; here is the next item.")
        return redirect("feedback:annotate")
    if not created:
        messages.info(request, "You had already answered that comparison; your first answer stands.")
    else:
        messages.success(request, f"Saved: {CHOSEN[choice]}", extra_tags=f"vote-saved comparison-saved choice-{choice}")
    return redirect("feedback:annotate")


@require_POST
@annotator_required
def vote(request):
    form = VoteForm(request.POST)
    if not form.is_valid():
        comment = request.POST.get("comment", "")
        if "comment" in form.errors and comment:
            # Keep what was typed: the page puts it back into the box for the same item.
            request.session[SESSION_COMMENT_DRAFT] = {
                "generation_id": form.cleaned_data.get("generation_id"),
                "comment": comment[: 4 * COMMENT_MAX_CHARS],
            }
            messages.error(
                request,
                f"Vote not saved: the comment has {len(comment):,} characters and the limit is "
                f"{COMMENT_MAX_CHARS:,}. Your text is still in the box: shorten it and vote again.",
            )
        else:
            messages.error(request, f"Vote not saved: {form.errors.as_text()}")
        return redirect("feedback:annotate")
    try:
        _, created = services.record_annotator_vote(
            request.user,
            form.cleaned_data["generation_id"],
            desirable=form.cleaned_data["label"] == "up",
            comment=form.cleaned_data["comment"],
            project=request.project,
        )
    except GenerationNotFound:
        messages.error(request, "That item no longer exists; here is the next one.")
        return redirect("feedback:annotate")
    if not created:
        messages.info(request, "You had already rated that item; your first vote stands.")
    else:
        label = form.cleaned_data["label"]
        messages.success(request, f"Saved {THUMB[label]}", extra_tags=f"vote-saved vote-{label}")
    return redirect("feedback:annotate")


@require_POST
@annotator_required
def skip(request):
    form = SkipForm(request.POST)
    if form.is_valid():
        generation_id, item_id = form.cleaned_data["generation_id"], form.cleaned_data["comparison_item_id"]
        if item_id is not None:
            _remember_skip(request, SESSION_SKIPPED_COMPARISONS, item_id)
            release_comparison_claim(request.user, item_id)
        else:
            _remember_skip(request, SESSION_SKIPPED, generation_id)
            services.release_claim(request.user, generation_id)
        messages.info(
            request,
            'Skipped. The item stays in the queue (so "waiting" does not drop) for another '
            "annotator; you will not see it again in this session.",
            extra_tags="skipped",
        )
    return redirect("feedback:annotate")


@require_POST
@annotator_required
def undo(request):
    item = undo_last_answer(request.user, request.project)
    if item is None:
        messages.info(request, "Nothing to undo.")
    elif isinstance(item, ComparisonItem):
        messages.success(request, "Last answer undone: choose again.")
    else:
        messages.success(request, "Last vote undone: rate the item again.")
    return redirect("feedback:annotate")


def _balance_in_words(n_desirable: int, n_undesirable: int) -> dict:
    """The D:U balance and the λ weights the next snapshot would get, explained for an admin."""
    from training.kto.balancing import ACCEPTED_HIGH, ACCEPTED_LOW, balance_weights

    if not n_desirable or not n_undesirable:
        missing = "undesirable (👎)" if n_desirable else "desirable (👍)"
        return {"ok": False, "text": f"No {missing} votes yet: KTO needs both kinds, so a snapshot cannot be balanced."}
    weights = balance_weights(n_desirable, n_undesirable, target_ratio=settings.KTO_TARGET_RATIO)
    ratio = n_desirable / n_undesirable
    if weights.desirable_weight == weights.undesirable_weight:
        action = (
            f"That is inside the paper's recommended band ({ACCEPTED_LOW:g} to {ACCEPTED_HIGH:g} desirable per "
            f"undesirable, its Eq. 7), so both kinds keep weight 1."
        )
    else:
        minority = "desirable" if weights.desirable_weight > weights.undesirable_weight else "undesirable"
        action = (
            f"That is outside the paper's recommended band ({ACCEPTED_LOW:g} to {ACCEPTED_HIGH:g}, its Eq. 7), so "
            f"the next snapshot weights the {minority} votes up to reach an effective ratio of "
            f"{weights.effective_ratio:.3g}."
        )
    return {
        "ok": True,
        "text": f"There are {ratio:.2f} desirable votes for every undesirable one. {action}",
        "desirable_weight": weights.desirable_weight,
        "undesirable_weight": weights.undesirable_weight,
    }


class SnapshotForm(forms.Form):
    # Initial values: the settings (passed by the dashboard view).
    holdout = forms.FloatField(min_value=0, max_value=0.9)
    target_ratio = forms.FloatField(min_value=0.01)
    mode = forms.ChoiceField(choices=[("auto", "auto (paper Eq. 7)"), ("downside_first", "downside first")])


@require_GET
@dashboard_required
def dashboard(request):
    stats = selectors.dashboard_stats(request.project)
    snapshot_form = SnapshotForm(
        initial={"holdout": settings.SNAPSHOT_HOLDOUT, "target_ratio": round(settings.KTO_TARGET_RATIO, 4)}
    )
    return render(
        request,
        "feedback/dashboard.html",
        {
            "stats": stats,
            "votes_chart": {
                "labels": [day.strftime("%b %d") for day, _ in stats.votes_per_day],
                "values": [n for _, n in stats.votes_per_day],
            },
            "balance": _balance_in_words(stats.n_desirable, stats.n_undesirable),
            "snapshots": selectors.recent_snapshots(request.project),
            "jobs": selectors.recent_jobs(request.project),
            "snapshot_form": snapshot_form,
        },
    )


@require_POST
@snapshot_required
def create_snapshot(request):
    form = SnapshotForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Snapshot not created: {form.errors.as_text()}")
        return redirect("feedback:dashboard")
    # A worker cuts it (50k votes take seconds): the job page follows it.
    job = jobs.create_snapshot_job(
        project=request.project,
        holdout=form.cleaned_data["holdout"],
        target_ratio=form.cleaned_data["target_ratio"],
        mode=form.cleaned_data["mode"],
        user=request.user,
    )
    messages.info(request, f"Snapshot job {job.pk} queued.")
    return redirect("feedback:job", job_id=job.pk)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="A UTF-8 JSONL file.")
    format = forms.ChoiceField(choices=[(name, name) for name in FORMAT_CHOICES], initial="auto")
    threshold = forms.FloatField(required=False, help_text="scored format: the score separating good from bad")
    on_invalid = forms.ChoiceField(
        choices=[
            ("fail", "fail: a bad line rejects the whole file, nothing is imported"),
            ("skip", "skip: import every valid line, list the skipped ones with their reasons"),
        ],
        initial="fail",
        widget=forms.RadioSelect,
        label="On a bad line",
    )

    def clean_threshold(self):
        value = self.cleaned_data["threshold"]
        if value is not None and not math.isfinite(value):
            raise forms.ValidationError("must be a finite number")
        return value


@csrf_exempt  # checked below, once the upload handler is in place (CSRF's check reads the body)
@import_required
def import_page(request):
    if request.method != "POST":
        return render(request, "feedback/import.html", {"form": ImportForm()})
    # The file goes to disk chunk by chunk under PROSPECT_IMPORT_MAX_UPLOAD_BYTES, never into memory.
    request.upload_handlers = [ImportUploadHandler(request)]
    return _receive_import(request)


@csrf_protect
def _receive_import(request):
    try:
        form = ImportForm(request.POST, request.FILES)
        valid = form.is_valid()
    except PayloadTooLarge as exc:
        form = ImportForm()
        form.add_error(None, str(exc.detail))
        return render(request, "feedback/import.html", {"form": form}, status=413)
    uploads = [upload for upload in request.FILES.values() if isinstance(upload, SavedUpload)]
    if not valid:
        for upload in uploads:
            upload.discard()
        return render(request, "feedback/import.html", {"form": form}, status=400)
    try:
        upload = claim_upload(form.cleaned_data["file"])
    except PayloadTooLarge as exc:
        form.add_error("file", str(exc.detail))
        return render(request, "feedback/import.html", {"form": form}, status=413)
    upload.close()
    job = jobs.create_import_job(
        project=request.project,
        upload_path=upload.saved_path,
        filename=upload.name,
        upload_bytes=upload.size,
        fmt=form.cleaned_data["format"],
        threshold=form.cleaned_data["threshold"],
        on_invalid=form.cleaned_data["on_invalid"],
        user=request.user,
    )
    messages.info(request, f"Import job {job.pk} queued: {upload.name}.")
    return redirect("feedback:job", job_id=job.pk)


@require_GET
@dashboard_required
def job_page(request, job_id: int):
    job = selectors.project_job(request.project, job_id)
    if job is None:
        raise Http404("no such job in this project")
    return render(
        request,
        "feedback/job.html",
        {
            "job": job,
            "skipped": selectors.skipped_lines(job.import_batch)[:SKIPPED_SHOWN] if job.import_batch_id else [],
            "skipped_shown": SKIPPED_SHOWN,
        },
    )
