"""The annotation queue: which item an annotator sees next, and their votes, skips and undos.

An item is served to one annotator at a time under a short lease (`Generation.claimed_by` /
`claimed_until`). Taking the lease is a single conditional UPDATE, which the database runs
atomically, so two annotators asking at the same moment never both get the same item.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from feedback import selectors
from feedback.models import Generation, Vote
from feedback.services.votes import record_vote
from projects.models import Project
from projects.selectors import resolve_project

# How many candidates to try when others grab the first ones between our read and our update.
CLAIM_ATTEMPTS = 20


def _claimable_by(user, now) -> Q:
    return Q(claimed_until__isnull=True) | Q(claimed_until__lt=now) | Q(claimed_by=user)


def _take_lease(user, generation_id: int, now, project: Project | None = None) -> bool:
    """Lease the item to the user if it is free and still waits for their vote."""
    lease_until = now + timedelta(seconds=settings.QUEUE_CLAIM_SECONDS)
    taken = (
        Generation.objects.filter(pk=generation_id)
        .filter(_claimable_by(user, now))
        .update(claimed_by=user, claimed_until=lease_until)
    )
    if taken != 1:
        return False
    if not selectors.is_waiting_for(user, generation_id, now, project):
        # Rated by someone else between the caller's queue read and this lease: their vote commits
        # before they give the lease back, so this read (after our lease) always sees it.
        release_claim(user, generation_id)
        return False
    return True


def release_claim(user, generation_id: int | None = None) -> None:
    """Drop the user's lease (on one item, or on all of them)."""
    leases = Generation.objects.filter(claimed_by=user)
    if generation_id is not None:
        leases = leases.filter(pk=generation_id)
    leases.update(claimed_by=None, claimed_until=None)


def claim_next_generation(user, skipped_ids: list[int] = (), project: Project | None = None) -> Generation | None:
    """The item this annotator should rate now, leased to them; None when nothing is waiting.

    The item already on their screen (a live lease) comes back first, so a reload shows the same
    item. Otherwise the queue serves items the user has not rated that still need votes, those
    needing the most votes first. Skipped items come back only when nothing else is left.
    """
    project = resolve_project(project)
    now = timezone.now()
    current = selectors.current_claim(user, now, project)
    if current is not None:
        return current
    for exclude in (list(skipped_ids), []):
        for candidate_id in selectors.queue_candidate_ids(
            user, now, exclude_ids=exclude, limit=CLAIM_ATTEMPTS, project=project
        ):
            if _take_lease(user, candidate_id, now, project):
                # One item on screen at a time: leases on anything else go back to the pool.
                Generation.objects.filter(claimed_by=user).exclude(pk=candidate_id).update(
                    claimed_by=None, claimed_until=None
                )
                return Generation.objects.select_related("prompt").get(pk=candidate_id)
        if not skipped_ids:
            break
    return None


def record_annotator_vote(
    user, generation_id: int, desirable: bool, comment: str = "", project: Project | None = None
) -> tuple[Vote, bool]:
    """A vote from the annotation page; GenerationNotFound for an item outside the project."""
    vote, created = record_vote(
        project_id=resolve_project(project).pk,
        generation_id=generation_id,
        desirable=desirable,
        annotator_id=user.pk,
        comment=comment.strip(),
        source="ui",
    )
    release_claim(user, generation_id)
    return vote, created


def undo_last_vote(user, project: Project | None = None) -> Generation | None:
    """Delete the annotator's most recent vote in the project and put that item back on their screen."""
    project = resolve_project(project)
    with transaction.atomic():
        vote = (
            Vote.objects.select_for_update().filter(annotator=user, generation__project=project).order_by("-id").first()
        )
        if vote is None:
            return None
        generation_id = vote.generation_id
        vote.delete()
        release_claim(user)
        # Force the lease: the user is taking back their own item, whoever else holds it.
        Generation.objects.filter(pk=generation_id).update(
            claimed_by=user, claimed_until=timezone.now() + timedelta(seconds=settings.QUEUE_CLAIM_SECONDS)
        )
    return Generation.objects.get(pk=generation_id)
