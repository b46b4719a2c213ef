"""Blind pairwise comparisons: starting one, serving its items, answers and undo.

A comparison puts two versions' stored greedy outputs on the same held-out prompts
(training.HeldoutOutput, written by the evaluation gate) in front of annotators, one prompt at a
time, the two outputs side by side with the sides drawn at random and no version named. The
annotation page serves these items before rating items: they are few (one per held-out prompt),
and a promotion may be waiting on them. Items are leased like generations (one annotator at a
time, a short lease taken with one conditional UPDATE).
"""

from __future__ import annotations

import random
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from feedback import comparison_selectors, selectors
from feedback.models import Comparison, ComparisonItem, ComparisonVote, Generation, Vote
from feedback.services.queue import claim_next_generation, undo_last_vote
from projects.models import Project
from training.models import HeldoutOutput

CLAIM_ATTEMPTS = 20
# Sides are drawn from the operating system's randomness: nothing about an item (its id, its
# prompt, the order versions were picked in) tells which version is on which side.
_sides = random.SystemRandom()


class ComparisonItemNotFound(LookupError):
    pass


def start_comparison(version_1, version_2, requested_by=None) -> Comparison:
    """Start (or extend, or reopen) the blind comparison of two versions of one project.

    One item per held-out prompt both versions have a stored output for, created once (calling
    again adds only prompts that gained outputs since). A prompt on which the two outputs are the
    same text (surrounding whitespace ignored) gets no item: an annotator could only answer "tie",
    which says nothing about which version is better, and would spend their time on it. Those are
    counted (n_identical) and the win rate is a win rate where the versions differ; that is what
    a paired sign test measures too (ties dropped).

    `requested_by` empty means the gate started it: its items are then served before those an
    admin asked for, because a promotion waits on them.
    """
    if version_1.pk == version_2.pk:
        raise ValueError("pick two different versions to compare")
    if version_1.project_id != version_2.project_id:
        raise ValueError("the two versions belong to different projects")
    a, b = comparison_selectors.ordered_pair(version_1, version_2)
    with transaction.atomic():
        comparison, created = Comparison.objects.get_or_create(
            version_a=a, version_b=b, defaults={"project_id": a.project_id, "requested_by": requested_by}
        )
        comparison = Comparison.objects.select_for_update().get(pk=comparison.pk)
        changed = []
        if comparison.closed_at is not None:
            comparison.closed_at = None
            changed.append("closed_at")
        if not created and requested_by is None and comparison.requested_by_id is not None:
            comparison.requested_by = None  # the gate now waits on it too: serve it first
            changed.append("requested_by")
        outputs_b = {output.prompt_sha256: output for output in HeldoutOutput.objects.filter(version=b)}
        existing = set(comparison.items.values_list("prompt_sha256", flat=True))
        new_items, n_identical = [], 0
        for output_a in HeldoutOutput.objects.filter(version=a).order_by("id"):
            output_b = outputs_b.get(output_a.prompt_sha256)
            if output_b is None:
                continue
            if output_a.completion.strip() == output_b.completion.strip():
                n_identical += 1
                continue
            if output_a.prompt_sha256 in existing:
                continue
            left, right = (output_a, output_b) if _sides.random() < 0.5 else (output_b, output_a)
            new_items.append(
                ComparisonItem(
                    comparison=comparison, prompt_sha256=output_a.prompt_sha256, left_output=left, right_output=right
                )
            )
        # A concurrent start of the same pair may have added some first (on SQLite, which has no row locks).
        ComparisonItem.objects.bulk_create(new_items, ignore_conflicts=True)
        if comparison.n_identical != n_identical:
            comparison.n_identical = n_identical
            changed.append("n_identical")
        if changed:
            comparison.save(update_fields=changed)
    return comparison


def close_comparison(comparison: Comparison) -> bool:
    """Stop serving a comparison's items (its answer is known); True when this call closed it."""
    return bool(Comparison.objects.filter(pk=comparison.pk, closed_at__isnull=True).update(closed_at=timezone.now()))


# --- Serving items --------------------------------------------------------------------------


def _lease_until(now):
    return now + timedelta(seconds=settings.QUEUE_CLAIM_SECONDS)


def _release_comparison_leases(user, keep_id: int | None = None) -> None:
    leases = ComparisonItem.objects.filter(claimed_by=user)
    if keep_id is not None:
        leases = leases.exclude(pk=keep_id)
    leases.update(claimed_by=None, claimed_until=None)


def _release_generation_leases(user) -> None:
    Generation.objects.filter(claimed_by=user).update(claimed_by=None, claimed_until=None)


def release_comparison_claim(user, item_id: int) -> None:
    ComparisonItem.objects.filter(pk=item_id, claimed_by=user).update(claimed_by=None, claimed_until=None)


def claim_next_comparison_item(user, project: Project, skipped_ids=()) -> ComparisonItem | None:
    """Lease the next comparison item to this user (skipped ones excluded); None when none waits."""
    now = timezone.now()
    for item_id in comparison_selectors.queue_candidate_ids(
        user, now, project, exclude_ids=skipped_ids, limit=CLAIM_ATTEMPTS
    ):
        taken = (
            ComparisonItem.objects.filter(pk=item_id)
            .filter(comparison_selectors.claimable_by(user, now))
            .update(claimed_by=user, claimed_until=_lease_until(now))
        )
        if taken:
            _release_comparison_leases(user, keep_id=item_id)
            _release_generation_leases(user)  # one item on screen at a time
            return comparison_selectors.load_item(item_id)
    return None


def next_annotation_item(
    user, project: Project, skipped_generation_ids=(), skipped_item_ids=()
) -> ComparisonItem | Generation | None:
    """What the annotation page shows this user now: a "which is better?" item or an output to rate.

    The item already on their screen comes back first (a reload shows the same item). Then
    comparison items, the gate's before an admin's: they are few, and a promotion may be waiting
    on them. Then outputs to rate. Skipped comparison items come back only when nothing else is left.
    """
    now = timezone.now()
    current = comparison_selectors.current_claim(user, now, project)
    if current is not None:
        return current
    current = selectors.current_claim(user, now, project)
    if current is not None:
        return current
    item = claim_next_comparison_item(user, project, skipped_ids=skipped_item_ids)
    if item is not None:
        return item
    generation = claim_next_generation(user, list(skipped_generation_ids), project=project)
    if generation is not None:
        _release_comparison_leases(user)
        return generation
    if skipped_item_ids:
        return claim_next_comparison_item(user, project)
    return None


# --- Answers and undo -----------------------------------------------------------------------


def record_comparison_vote(user, item_id: int, choice: str, project: Project) -> tuple[ComparisonVote, bool]:
    """An annotator's answer on an item of the project; the first answer stands (a repeat returns it).

    ComparisonItemNotFound for an item outside the project (answered exactly like a missing one).
    """
    if choice not in ComparisonVote.Choice.values:
        raise ValueError(f"choice must be one of {', '.join(ComparisonVote.Choice.values)}, got {choice!r}")
    item = ComparisonItem.objects.filter(pk=item_id, comparison__project=project).first()
    if item is None:
        raise ComparisonItemNotFound(f"comparison item {item_id} does not exist")
    try:
        with transaction.atomic():
            vote = ComparisonVote.objects.create(item=item, annotator=user, choice=choice)
        created = True
    except IntegrityError:  # this annotator already answered it (a double submit): the first stands
        vote, created = ComparisonVote.objects.filter(item=item, annotator=user).first(), False
        if vote is None:  # not a repeat: the item was deleted in between
            raise ComparisonItemNotFound(f"comparison item {item_id} does not exist") from None
    release_comparison_claim(user, item.pk)
    return vote, created


def undo_last_answer(user, project: Project) -> ComparisonItem | Generation | None:
    """Undo the user's most recent answer in the project, a thumb or a comparison, and put that item
    back on their screen; None when there is nothing to undo."""
    last_vote = Vote.objects.filter(annotator=user, generation__project=project).order_by("-created_at", "-id").first()
    last_comparison = (
        ComparisonVote.objects.filter(annotator=user, item__comparison__project=project)
        .order_by("-created_at", "-id")
        .first()
    )
    if last_comparison is None or (last_vote is not None and last_vote.created_at > last_comparison.created_at):
        generation = undo_last_vote(user, project)
        if generation is not None:
            _release_comparison_leases(user)
        return generation
    with transaction.atomic():
        deleted, _ = ComparisonVote.objects.filter(pk=last_comparison.pk).delete()
        if not deleted:  # a concurrent undo took it first
            return None
        _release_comparison_leases(user)
        _release_generation_leases(user)
        # Force the lease: the user is taking back their own item, whoever else holds it.
        ComparisonItem.objects.filter(pk=last_comparison.item_id).update(
            claimed_by=user, claimed_until=_lease_until(timezone.now())
        )
    return comparison_selectors.load_item(last_comparison.item_id)
