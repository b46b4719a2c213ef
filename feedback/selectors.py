"""Every read of the feedback app that is more than a one-line lookup."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, F, OuterRef, Q, Value
from django.db.models.functions import TruncDate
from django.utils import timezone

from config.edge import MAX_DATABASE_ID
from feedback.models import DatasetSnapshot, Generation, ImportBatch, Job, Prompt, Vote
from projects.models import Project
from projects.roles import ANNOTATORS_GROUP, RATE
from projects.selectors import has_project_perm, resolve_project

__all__ = ["ANNOTATORS_GROUP"]


def is_annotator(user, project: Project | None = None) -> bool:
    """May the user rate in the project (None: the default project)? Annotators, project admins, superusers."""
    if not user.is_authenticated or not user.is_active:
        return False
    return has_project_perm(user, resolve_project(project), RATE)


# --- The annotation queue -------------------------------------------------------------------


def _claimable(user, now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now) | Q(claimed_by=user)


def _waiting_with_own_target(user, now, project):
    """Items given their own number of votes (a double-rated slice): counted vote by vote."""
    return (
        Generation.objects.filter(project=project, votes_wanted__isnull=False)
        .filter(_claimable(user, now))
        .exclude(votes__annotator=user)
        .annotate(votes_missing=F("votes_wanted") - Count("votes"))
        .filter(votes_missing__gt=0)
    )


def _waiting_with_default_target(user, now, project):
    """Items under settings.VOTES_PER_ITEM, the bulk of the queue.

    With the default of one vote, "waiting" means "no vote at all": an anti-join that the
    database answers from the vote index and stops scanning as soon as it has enough rows, so the
    queue stays fast with millions of generations. Larger defaults count votes per item.
    """
    items = Generation.objects.filter(project=project, votes_wanted__isnull=True).filter(_claimable(user, now))
    if settings.VOTES_PER_ITEM <= 1:
        return items.filter(~Exists(Vote.objects.filter(generation=OuterRef("pk")))).annotate(votes_missing=Value(1))
    return (
        items.exclude(votes__annotator=user)
        .annotate(votes_missing=Value(settings.VOTES_PER_ITEM) - Count("votes"))
        .filter(votes_missing__gt=0)
    )


def queue_candidate_ids(
    user, now, exclude_ids: list[int] = (), limit: int = 20, project: Project | None = None
) -> list[int]:
    """Items of the project in serving order: the most votes still missing first, then the oldest."""
    project = resolve_project(project)
    ranked = []
    for waiting in (_waiting_with_own_target(user, now, project), _waiting_with_default_target(user, now, project)):
        if exclude_ids:
            waiting = waiting.exclude(pk__in=list(exclude_ids))
        ranked += waiting.order_by("-votes_missing", "id").values_list("votes_missing", "id")[:limit]
    ranked.sort(key=lambda row: (-row[0], row[1]))
    return [generation_id for _, generation_id in ranked[:limit]]


def is_waiting_for(user, generation_id: int, now, project: Project | None = None) -> bool:
    """Does this item still need a vote that this user may give (the queue's own conditions)?"""
    project = resolve_project(project)
    return any(
        waiting.filter(pk=generation_id).exists()
        for waiting in (_waiting_with_own_target(user, now, project), _waiting_with_default_target(user, now, project))
    )


def current_claim(user, now, project: Project | None = None) -> Generation | None:
    return (
        Generation.objects.select_related("prompt")
        .filter(project=resolve_project(project), claimed_by=user, claimed_until__gt=now)
        .exclude(votes__annotator=user)
        .order_by("-claimed_until")
        .first()
    )


# Counting every waiting item on each page load would cost a scan of all generations; past this
# many the page just says "10000+ waiting".
WAITING_COUNT_CAP = 10_000


@dataclass(frozen=True)
class QueueProgress:
    rated_today: int
    waiting: int
    waiting_capped: bool = False


def queue_progress(user, project: Project | None = None) -> QueueProgress:
    project = resolve_project(project)
    now = timezone.now()
    start_of_today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    waiting = 0
    for items in (_waiting_with_own_target(user, now, project), _waiting_with_default_target(user, now, project)):
        waiting += items.values("id")[: WAITING_COUNT_CAP - waiting + 1].count()
        if waiting > WAITING_COUNT_CAP:
            break
    return QueueProgress(
        rated_today=Vote.objects.filter(
            generation__project=project, annotator=user, created_at__gte=start_of_today
        ).count(),
        waiting=min(waiting, WAITING_COUNT_CAP),
        waiting_capped=waiting > WAITING_COUNT_CAP,
    )


# --- The admin dashboard --------------------------------------------------------------------


@dataclass
class AnnotatorStats:
    username: str
    n_votes: int
    n_desirable: int
    # Among this annotator's votes on items with several votes and a clear majority.
    n_compared: int = 0
    n_agreeing: int = 0

    @property
    def agreement(self) -> float | None:
        return self.n_agreeing / self.n_compared if self.n_compared else None


@dataclass
class DashboardStats:
    n_prompts: int
    n_generations: int
    n_votes: int
    n_desirable: int
    n_undesirable: int
    n_multi_vote_items: int
    n_unanimous_items: int
    annotators: list[AnnotatorStats] = field(default_factory=list)
    votes_per_day: list[tuple[datetime, int]] = field(default_factory=list)
    n_votes_since_last_snapshot: int = 0

    @property
    def desirable_ratio(self) -> str:
        if not self.n_undesirable:
            return "—" if not self.n_desirable else "all desirable"
        return f"{self.n_desirable / self.n_undesirable:.2f} : 1"


def dashboard_stats(project: Project | None = None, days: int = 14) -> DashboardStats:
    project = resolve_project(project)
    votes = Vote.objects.filter(generation__project=project)
    votes_by_label = dict(votes.values_list("desirable").annotate(n=Count("id")).values_list("desirable", "n"))
    n_desirable, n_undesirable = votes_by_label.get(True, 0), votes_by_label.get(False, 0)

    # Agreement with the majority, on items with several votes (ties have no majority).
    multi_vote_ids = Generation.objects.filter(project=project).annotate(n=Count("votes")).filter(n__gte=2).values("id")
    labels_by_item: dict[int, list[tuple[int | None, bool]]] = defaultdict(list)
    for generation_id, annotator_id, desirable in votes.filter(generation_id__in=multi_vote_ids).values_list(
        "generation_id", "annotator_id", "desirable"
    ):
        labels_by_item[generation_id].append((annotator_id, desirable))

    per_annotator: dict[int, AnnotatorStats] = {}
    User = get_user_model()
    for row in (
        votes.filter(annotator__isnull=False)
        .values("annotator_id", username=F(f"annotator__{User.USERNAME_FIELD}"))
        .annotate(n_votes=Count("id"), n_desirable=Count("id", filter=Q(desirable=True)))
        .order_by("-n_votes")
    ):
        per_annotator[row["annotator_id"]] = AnnotatorStats(row["username"], row["n_votes"], row["n_desirable"])

    n_unanimous = 0
    for labels in labels_by_item.values():
        tally = Counter(desirable for _, desirable in labels)
        if len(tally) == 1:
            n_unanimous += 1
        if tally[True] == tally[False]:
            continue
        majority = tally[True] > tally[False]
        for annotator_id, desirable in labels:
            if annotator_id in per_annotator:
                per_annotator[annotator_id].n_compared += 1
                per_annotator[annotator_id].n_agreeing += int(desirable == majority)

    since = timezone.now() - timedelta(days=days - 1)
    since = timezone.localtime(since).replace(hour=0, minute=0, second=0, microsecond=0)
    per_day = dict(
        votes.filter(created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_current_timezone()))
        .values("day")
        .annotate(n=Count("id"))
        .values_list("day", "n")
    )
    first_day = since.date()
    votes_per_day = [
        (first_day + timedelta(days=i), per_day.get(first_day + timedelta(days=i), 0)) for i in range(days)
    ]

    last_snapshot = DatasetSnapshot.objects.filter(project=project).order_by("-id").first()
    return DashboardStats(
        n_prompts=Prompt.objects.filter(project=project).count(),
        n_generations=Generation.objects.filter(project=project).count(),
        n_votes=n_desirable + n_undesirable,
        n_desirable=n_desirable,
        n_undesirable=n_undesirable,
        n_multi_vote_items=len(labels_by_item),
        n_unanimous_items=n_unanimous,
        annotators=list(per_annotator.values()),
        votes_per_day=votes_per_day,
        n_votes_since_last_snapshot=votes.filter(id__gt=last_snapshot.last_vote_id if last_snapshot else 0).count(),
    )


def recent_snapshots(project: Project | None = None, limit: int = 10) -> list[DatasetSnapshot]:
    return list(DatasetSnapshot.objects.filter(project=resolve_project(project)).order_by("-id")[:limit])


def skipped_lines(batch: ImportBatch) -> list[dict]:
    """The lines an import with on_invalid=skip left out: [{line, field, reason}], in file order."""
    if not batch.skipped_report:
        return []
    with open(batch.skipped_report, encoding="utf-8") as report:
        return [json.loads(line) for line in report if line.strip()]


def recent_jobs(project: Project, limit: int = 10) -> list[Job]:
    return list(Job.objects.filter(project=project).select_related("created_by").order_by("-id")[:limit])


def project_job(project: Project, job_id: int) -> Job | None:
    """The project's job of this id (None: none, or another project's)."""
    if not 1 <= job_id <= MAX_DATABASE_ID:
        return None
    return Job.objects.filter(pk=job_id, project=project).first()
