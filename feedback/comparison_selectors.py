"""Reads of the blind pairwise comparisons: which item an annotator answers next, and the tally.

Writes are in feedback.services.comparisons; the statistics (win rate, confidence interval) are
the pairwise judge's (training.judges.pairwise).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Case, Count, Q, Value, When
from django.utils import timezone

from feedback.models import Comparison, ComparisonItem, ComparisonVote
from projects.models import Project


def ordered_pair(version_1, version_2) -> tuple:
    """The two versions in the order a Comparison stores them (the smaller id is version_a)."""
    return (version_1, version_2) if version_1.pk < version_2.pk else (version_2, version_1)


def comparison_between(version_1, version_2) -> Comparison | None:
    """The comparison of two versions, whichever was named first; None when none was started."""
    a, b = ordered_pair(version_1, version_2)
    return Comparison.objects.filter(version_a=a, version_b=b).first()


# --- The annotation queue -------------------------------------------------------------------


def claimable_by(user, now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now) | Q(claimed_by=user)


def _open_items(project: Project):
    return ComparisonItem.objects.filter(comparison__project=project, comparison__closed_at__isnull=True)


def waiting_items(user, now, project: Project):
    """Items of the project's open comparisons this user has not answered that still need answers."""
    return (
        _open_items(project)
        .filter(claimable_by(user, now))
        .exclude(votes__annotator=user)
        .annotate(n_votes=Count("votes"))
        .filter(n_votes__lt=settings.VOTES_PER_ITEM)
    )


def queue_candidate_ids(user, now, project: Project, exclude_ids=(), limit: int = 20) -> list[int]:
    """Items in serving order: comparisons the gate waits on (no requester) first, then the oldest."""
    items = waiting_items(user, now, project)
    if exclude_ids:
        items = items.exclude(pk__in=list(exclude_ids))
    asked_by_admin = Case(When(comparison__requested_by__isnull=True, then=Value(0)), default=Value(1))
    return list(
        items.annotate(asked_by_admin=asked_by_admin)
        .order_by("asked_by_admin", "comparison__created_at", "comparison_id", "id")
        .values_list("id", flat=True)[:limit]
    )


def current_claim(user, now, project: Project) -> ComparisonItem | None:
    """The item on this user's screen (a live lease they have not answered yet), if any."""
    return (
        _open_items(project)
        .select_related("left_output", "right_output")
        .filter(claimed_by=user, claimed_until__gt=now)
        .exclude(votes__annotator=user)
        .order_by("-claimed_until")
        .first()
    )


def load_item(item_id: int) -> ComparisonItem:
    return ComparisonItem.objects.select_related("left_output", "right_output").get(pk=item_id)


@dataclass(frozen=True)
class ComparisonProgress:
    answered_today: int
    waiting: int


def comparison_progress(user, project: Project) -> ComparisonProgress:
    now = timezone.now()
    start_of_today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    return ComparisonProgress(
        answered_today=ComparisonVote.objects.filter(
            annotator=user, item__comparison__project=project, created_at__gte=start_of_today
        ).count(),
        waiting=waiting_items(user, now, project).count(),
    )


# --- The tally ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparisonTally:
    """A comparison's answers seen from one of its two versions ("this version wins ...").

    Each answered item scores 1 (this version's output chosen), 0 (the other's) or ½ (a tie); an
    item answered by several annotators scores the mean of their answers, so an item counts once
    however many people answered it (the statistics treat items, not votes, as independent).
    """

    score: float  # sum of the answered items' scores
    n_answered: int  # items with at least one answer
    n_items: int  # items created (prompts where the two versions answered differently)
    n_identical: int  # held-out prompts skipped because both versions answered exactly alike
    wins: int  # answered items scoring above ½ / below ½ / exactly ½
    losses: int
    ties: int
    n_votes: int

    @property
    def all_answered(self) -> bool:
        return self.n_items > 0 and self.n_answered == self.n_items


def tally(comparison: Comparison, for_version) -> ComparisonTally:
    """The comparison's answers so far, scored for `for_version` (one of its two versions)."""
    if for_version.pk not in (comparison.version_a_id, comparison.version_b_id):
        raise ValueError(f"version {for_version.pk} is not one of comparison {comparison.pk}'s versions")
    scores: dict[int, list[float]] = defaultdict(list)
    votes = ComparisonVote.objects.filter(item__comparison=comparison).values_list(
        "item_id", "choice", "item__left_output__version_id"
    )
    for item_id, choice, left_version_id in votes:
        if choice == ComparisonVote.Choice.TIE:
            scores[item_id].append(0.5)
        else:
            chosen_left = choice == ComparisonVote.Choice.LEFT
            scores[item_id].append(1.0 if chosen_left == (left_version_id == for_version.pk) else 0.0)
    item_scores = [sum(answers) / len(answers) for answers in scores.values()]
    return ComparisonTally(
        score=sum(item_scores),
        n_answered=len(item_scores),
        n_items=comparison.items.count(),
        n_identical=comparison.n_identical,
        wins=sum(1 for score in item_scores if score > 0.5),
        losses=sum(1 for score in item_scores if score < 0.5),
        ties=sum(1 for score in item_scores if score == 0.5),
        n_votes=sum(len(answers) for answers in scores.values()),
    )
