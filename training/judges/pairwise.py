"""The pairwise judge: blind comparisons by annotators, candidate vs active, on held-out prompts.

start() puts the two versions' stored greedy outputs on the project's held-out prompts (the
gate's HeldoutOutput rows: store them for both versions before calling it) in front of
annotators as "which is better?" items, sides drawn at random, no version named. judge() reads
the answers: the candidate's win rate with ties counted as half a win, and a confidence interval
around it at the policy's confidence.

- PROMOTE when the interval lies above 50 % (with at least the minimum number of comparisons);
- REJECT when it lies below 50 %, or when every item is answered and it is not above 50 %;
- INCONCLUSIVE when there are fewer items than the minimum (the versions differ on too few
  held-out prompts for the evidence ever to suffice) or none was started;
- WAIT otherwise: the gate asks again later.

A decided comparison is closed, so annotators stop being served its items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from feedback import comparison_selectors
from feedback.services.comparisons import close_comparison, start_comparison
from training.judges import Outcome, Verdict

NAME = "pairwise"
DEFAULT_CONFIDENCE = 0.95
# Fewer answered items than this never decide, whatever the interval says: a 4-item streak would
# otherwise promote at the first look, and the gate looks again and again while answers come in
# (each look is a chance for noise to cross the line). 20 items also keep Wilson's interval honest.
DEFAULT_MIN_COMPARISONS = 20


def _policy_value(policy, names: tuple[str, ...], default):
    """A setting of the policy (a model row or a dict) under the first of `names` it has, else `default`.

    The policy may predate these fields (they are added with the gate's rework): defaults keep the
    judge working either way.
    """
    for name in names:
        value = policy.get(name) if isinstance(policy, dict) else getattr(policy, name, None)
        if value is not None:
            return value
    return default


def confidence_of(policy) -> float:
    confidence = float(_policy_value(policy, ("confidence",), DEFAULT_CONFIDENCE))
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be at least 0.5 and below 1, got {confidence}")
    return confidence


def min_comparisons_of(policy) -> int:
    return max(1, int(_policy_value(policy, ("pairwise_min_comparisons", "min_comparisons"), DEFAULT_MIN_COMPARISONS)))


def wilson_interval(successes: float, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Two-sided Wilson score interval for a proportion: (low, high) at `confidence`.

    Why Wilson rather than the exact (Clopper–Pearson) binomial interval: ties count as half a
    win, so the number of successes is not always an integer, which the exact interval needs;
    Wilson's is defined for any observed share. It also keeps close to its nominal coverage at
    small n and near 0 or 1, where the plain normal (Wald) interval collapses to a point.

    Why it is safe with half wins: each item scores 0, ½ or 1 (or a mean of those); a score in
    [0, 1] with mean p has variance at most p(1 − p), the variance the interval assumes, so
    counting ties as halves only makes the interval wider than it need be, never too narrow.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie between 0 and n={n}, got {successes}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    share = successes / n
    denominator = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / denominator
    # Clamped: rounding can put the ends a hair outside [0, 1] at share 0 or 1.
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


@dataclass(frozen=True)
class WinRate:
    """A version's win rate over the answered items of a comparison, with its interval."""

    share: float | None  # None when nothing is answered yet
    low: float
    high: float
    confidence: float
    tally: comparison_selectors.ComparisonTally

    @property
    def n(self) -> int:
        return self.tally.n_answered

    def describe(self, who: str = "candidate") -> str:
        """ "candidate wins 61 % of 212 blind comparisons, 95 % CI 54–68 %"."""
        t = self.tally
        if not t.n_answered:
            return f"no blind comparison answered yet (0 of {t.n_items})"
        ties = f" ({t.ties} tie{'s' if t.ties != 1 else ''} counted half)" if t.ties else ""
        return (
            f"{who} wins {_percent(self.share)} % of {t.n_answered} blind comparison"
            f"{'s' if t.n_answered != 1 else ''}{ties}, {_percent(self.confidence)} % CI "
            f"{_percent(self.low)}–{_percent(self.high)} %"
        )

    def evidence(self) -> dict:
        t = self.tally
        return {
            "win_rate": self.share,
            "ci_low": self.low,
            "ci_high": self.high,
            "confidence": self.confidence,
            "answered": t.n_answered,
            "items": t.n_items,
            "identical_outputs_skipped": t.n_identical,
            "wins": t.wins,
            "losses": t.losses,
            "ties": t.ties,
            "votes": t.n_votes,
        }


def _percent(share: float) -> str:
    return f"{100 * share:.0f}"


def win_rate(tally: comparison_selectors.ComparisonTally, confidence: float = DEFAULT_CONFIDENCE) -> WinRate:
    """The win rate (ties split) and its Wilson interval from a tally."""
    if not tally.n_answered:
        return WinRate(None, 0.0, 1.0, confidence, tally)
    low, high = wilson_interval(tally.score, tally.n_answered, confidence)
    return WinRate(tally.score / tally.n_answered, low, high, confidence, tally)


def comparison_win_rate(version_1, version_2, confidence: float = DEFAULT_CONFIDENCE) -> WinRate | None:
    """version_2's win rate over version_1 in their comparison; None when none was started."""
    comparison = comparison_selectors.comparison_between(version_1, version_2)
    if comparison is None:
        return None
    return win_rate(comparison_selectors.tally(comparison, version_2), confidence)


def decide(rate: WinRate, min_comparisons: int) -> tuple[Outcome, str]:
    """(outcome, what follows the evidence in the sentence) from a win rate. Pure: no database."""
    t = rate.tally
    if t.n_items == 0:
        why = (
            f"the two versions answered all {t.n_identical} held-out prompts alike"
            if t.n_identical
            else "no held-out prompt has outputs from both versions"
        )
        return Outcome.INCONCLUSIVE, f"{why}: nothing to compare blind, not promoted"
    if t.n_items < min_comparisons:
        return (
            Outcome.INCONCLUSIVE,
            f"the versions differ on only {t.n_items} held-out prompts, fewer than the {min_comparisons} "
            "comparisons needed: not promoted",
        )
    if t.n_answered >= min_comparisons and rate.low > 0.5:
        return Outcome.PROMOTE, "promoted"
    if t.n_answered >= min_comparisons and rate.high < 0.5:
        return Outcome.REJECT, "not promoted (worse)"
    if t.all_answered:
        return Outcome.REJECT, f"not promoted (all {t.n_items} answered, not above 50 %)"
    if t.n_answered < min_comparisons:
        return Outcome.WAIT, f"waiting for annotators ({min_comparisons} needed, {t.n_items} items)"
    return Outcome.WAIT, f"waiting for more answers ({t.n_answered} of {t.n_items} items; the interval spans 50 %)"


# Annotators answer over time: the gate asks again (beat) while this judge says WAIT.
COLLECTS_EVIDENCE = True


def start(candidate, active, policy) -> None:
    """Create the blind comparison items of candidate vs active (idempotent: a second call adds
    only prompts that gained outputs for both since)."""
    start_comparison(candidate, active, requested_by=None)


def finish(candidate, active, policy) -> None:
    """The gate decided (or an admin did by hand): stop serving this pair's items to annotators."""
    comparison = comparison_selectors.comparison_between(candidate, active)
    if comparison is not None:
        close_comparison(comparison)


def judge(candidate, active, policy) -> Verdict:
    confidence = confidence_of(policy)
    min_comparisons = min_comparisons_of(policy)
    comparison = comparison_selectors.comparison_between(candidate, active)
    if comparison is None:
        return Verdict(
            NAME,
            Outcome.INCONCLUSIVE,
            f"no blind comparison of {candidate.name} and {active.name} was started: not promoted",
            {"min_comparisons": min_comparisons, "confidence": confidence},
        )
    rate = win_rate(comparison_selectors.tally(comparison, candidate), confidence)
    outcome, conclusion = decide(rate, min_comparisons)
    if outcome != Outcome.WAIT:
        close_comparison(comparison)
    evidence = {
        **rate.evidence(),
        "comparison_id": comparison.pk,
        "min_comparisons": min_comparisons,
        "candidate": candidate.name,
        "active": active.name,
    }
    if not rate.tally.n_answered and outcome != Outcome.WAIT:
        return Verdict(NAME, outcome, conclusion[:1].upper() + conclusion[1:], evidence)
    return Verdict(NAME, outcome, f"{rate.describe()}: {conclusion}", evidence)
