"""The `canary` judge: a share of live product traffic is answered by the candidate, and the end
users' thumbs-up rate of its answers is compared with the active version's.

start() opens the canary (ModelVersion.canary_share; training.routing then sends that share of end
users to the candidate, each end user always to the same side). judge() counts the end users'
votes (votes sent with a project API key) on answers served since the canary opened, each credited
to the version that served that answer to that end user (training.models.ServedCompletion), and
compares the two thumbs-up rates with a two-proportion z-test:
- the candidate better at the configured confidence → PROMOTE;
- worse at that confidence → REJECT: the gate rejects the candidate, and traffic goes back to the
  active version (the automatic roll back);
- otherwise WAIT for more votes, until each side has canary_max_votes → INCONCLUSIVE.
finish() closes the canary (share 0) whatever the gate decided.

Asking again every few minutes and stopping at the first significant answer inflates the error
rate somewhat compared with one test at a fixed sample size; canary_min_votes (no test before it)
and a high confidence keep that in check.
"""

from __future__ import annotations

from django.db.models import Q
from django.utils import timezone

from feedback.models import Vote
from training.judges import Outcome, Verdict
from training.judges.statistics import one_sided_alpha, percent, two_proportions
from training.models import ModelVersion, ServedCompletion

NAME = "canary"
# A judge that gathers evidence over time: the gate starts it only after the judges that measure
# at once have said PROMOTE, so a candidate that fails offline never meets an end user.
COLLECTS_EVIDENCE = True


def start(candidate, active, policy) -> None:
    """Open the canary once (a second call keeps the first start time and share)."""
    ModelVersion.objects.filter(pk=candidate.pk, status=ModelVersion.Status.CANDIDATE, canary_started_at=None).update(
        canary_share=float(policy.canary_share), canary_started_at=timezone.now()
    )
    candidate.refresh_from_db(fields=["canary_share", "canary_started_at"])


def finish(candidate, active, policy) -> None:
    """Close the canary: every request goes to the active version again."""
    ModelVersion.objects.filter(pk=candidate.pk).update(canary_share=0.0)


def canary_votes(candidate: ModelVersion, active: ModelVersion) -> dict:
    """{"candidate": (up, n), "active": (up, n), "unattributed": n} of end-user votes since the canary opened.

    A vote counts for the version that served its generation to the voting end user (the serving's
    routing key is the vote's external_user_id); when that end user's serving is unknown, for the
    one version that served the generation during the canary, if only one did; else it is left out.
    """
    started = candidate.canary_started_at
    counts = {"candidate": [0, 0], "active": [0, 0], "unattributed": 0}
    if started is None:
        return {"candidate": (0, 0), "active": (0, 0), "unattributed": 0}
    servings = ServedCompletion.objects.filter(
        project_id=candidate.project_id, version_id__in=(candidate.pk, active.pk), created_at__gte=started
    ).order_by("created_at", "id")
    by_user: dict[tuple[int, str], int] = {}
    by_generation: dict[int, set[int]] = {}
    for generation_id, routing_key, version_id in servings.values_list("generation_id", "routing_key", "version_id"):
        by_user[(generation_id, routing_key)] = version_id  # the latest serving to that end user wins
        by_generation.setdefault(generation_id, set()).add(version_id)
    side = {candidate.pk: "candidate", active.pk: "active"}
    votes = Vote.objects.filter(
        Q(api_client__isnull=False), generation_id__in=list(by_generation), created_at__gte=started
    ).values_list("generation_id", "external_user_id", "desirable")
    for generation_id, user, desirable in votes:
        version_id = by_user.get((generation_id, user or ""))
        if version_id is None and len(by_generation[generation_id]) == 1:
            (version_id,) = by_generation[generation_id]
        if version_id is None:
            counts["unattributed"] += 1
            continue
        counts[side[version_id]][0] += int(desirable)
        counts[side[version_id]][1] += 1
    return {
        "candidate": tuple(counts["candidate"]),
        "active": tuple(counts["active"]),
        "unattributed": counts["unattributed"],
    }


def judge(candidate, active, policy) -> Verdict:
    candidate.refresh_from_db(fields=["canary_share", "canary_started_at"])
    counts = canary_votes(candidate, active)
    return decide(
        counts,
        confidence=float(policy.confidence),
        min_votes=int(policy.canary_min_votes),
        max_votes=int(policy.canary_max_votes),
        share=float(policy.canary_share),
    )


def decide(counts: dict, *, confidence: float, min_votes: int, max_votes: int, share: float) -> Verdict:
    (up_c, n_c), (up_a, n_a) = counts["candidate"], counts["active"]
    evidence = {
        "share": share,
        "candidate_up": up_c,
        "candidate_votes": n_c,
        "active_up": up_a,
        "active_votes": n_a,
        "unattributed_votes": counts.get("unattributed", 0),
        "min_votes": min_votes,
        "max_votes": max_votes,
        "confidence": confidence,
    }
    if n_c < min_votes or n_a < min_votes:
        sentence = (
            f"canary ({percent(share)} of traffic): {n_c} of {min_votes} end-user votes on the candidate, "
            f"{n_a} of {min_votes} on the active version so far: collecting"
        )
        return Verdict(NAME, Outcome.WAIT, sentence, evidence)
    test = two_proportions(up_c, n_c, up_a, n_a, confidence)
    alpha = one_sided_alpha(confidence)
    evidence.update(
        candidate_rate=test.rate_a,
        active_rate=test.rate_b,
        difference=test.difference,
        ci_low=test.low,
        ci_high=test.high,
        z=test.z,
        p_better=test.p_better,
        p_worse=test.p_worse,
    )
    if test.p_better <= alpha:
        outcome, ending = Outcome.PROMOTE, "promoted"
    elif test.p_worse <= alpha:
        outcome, ending = Outcome.REJECT, "worse, rolled back to the active version"
    elif min(n_c, n_a) >= max_votes:
        outcome, ending = Outcome.INCONCLUSIVE, f"no clear difference after {max_votes} votes a side, not promoted"
    else:
        outcome, ending = Outcome.WAIT, "no clear difference yet, collecting"
    sentence = (
        f"canary: candidate {percent(test.rate_a)} thumbs up of {n_c} end-user votes vs active "
        f"{percent(test.rate_b)} of {n_a}, difference {100 * test.difference:+.0f} pt "
        f"({percent(confidence)} CI {100 * test.low:+.0f} to {100 * test.high:+.0f} pt, "
        f"p={min(test.p_better, test.p_worse):.2g}): {ending}"
    )
    return Verdict(NAME, outcome, sentence, evidence)
