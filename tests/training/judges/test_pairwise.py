"""The pairwise judge: Wilson's interval, the decision rule, and its verdict on stored answers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from feedback.comparison_selectors import ComparisonTally
from feedback.models import Comparison
from tests.feedback.helpers import add_heldout_outputs, add_version, answer, make_annotator
from training.judges import Outcome, judge_module
from training.judges.pairwise import (
    DEFAULT_MIN_COMPARISONS,
    confidence_of,
    decide,
    min_comparisons_of,
    wilson_interval,
    win_rate,
)

# --- Statistics (no database) -----------------------------------------------------------------


def test_wilson_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 → 0.2553–0.3662 (95 %);
    # 15/148 → 0.0624–0.1605; 0/20 → 0–0.1611; 1/29 → 0.0061–0.1718.
    for successes, n, low, high in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                                    (1, 29, 0.0061, 0.1718)):  # fmt: skip
        got = wilson_interval(successes, n, 0.95)
        assert got == pytest.approx((low, high), abs=5e-5), (successes, n)


def test_the_interval_is_symmetric_narrows_with_n_and_widens_with_confidence():
    low, high = wilson_interval(13.5, 20)
    mirrored = wilson_interval(20 - 13.5, 20)  # a half win each way: ties split
    assert (low, high) == pytest.approx((1 - mirrored[1], 1 - mirrored[0]))
    assert wilson_interval(130, 200)[1] - wilson_interval(130, 200)[0] < high - low
    assert wilson_interval(13.5, 20, 0.99)[0] < low < wilson_interval(13.5, 20, 0.80)[0]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(21, 20)


def test_coverage_stays_near_the_nominal_level():
    # Exact coverage: the probability, over Binomial(n, p), that the interval contains p.
    for n in (20, 50):
        for p in (0.3, 0.5, 0.7):
            coverage = sum(
                math.comb(n, k) * p**k * (1 - p) ** (n - k)
                for k in range(n + 1)
                if wilson_interval(k, n)[0] <= p <= wilson_interval(k, n)[1]
            )
            assert coverage > 0.92, (n, p, coverage)


def tally(score, answered, items, ties=0, identical=0):
    return ComparisonTally(score, answered, items, identical, 0, 0, ties, answered)


@pytest.mark.parametrize(
    "score, answered, items, outcome",
    [
        (16, 20, 20, Outcome.PROMOTE),  # 80 % of 20: CI 58–92 %
        (8, 10, 40, Outcome.WAIT),  # 80 % but fewer than the minimum answered
        (13, 20, 40, Outcome.WAIT),  # 65 % of 20: CI 43–82 %, items left
        (13, 20, 20, Outcome.REJECT),  # the same with every item answered: not above 50 %
        (4, 30, 40, Outcome.REJECT),  # CI below 50 %
        (0, 0, 12, Outcome.INCONCLUSIVE),  # fewer items than the minimum can ever answer
        (0, 0, 0, Outcome.INCONCLUSIVE),
    ],
)
def test_the_decision_rule(score, answered, items, outcome):
    rate = win_rate(tally(score, answered, items), 0.95)
    assert decide(rate, DEFAULT_MIN_COMPARISONS)[0] == outcome


def test_policy_fields_are_read_when_present_and_defaulted_otherwise():
    assert (confidence_of(SimpleNamespace()), min_comparisons_of(SimpleNamespace())) == (0.95, DEFAULT_MIN_COMPARISONS)
    policy = SimpleNamespace(confidence=0.9, min_comparisons=30)
    assert (confidence_of(policy), min_comparisons_of(policy)) == (0.9, 30)
    assert confidence_of({"confidence": 0.99}) == 0.99
    with pytest.raises(ValueError, match="confidence"):
        confidence_of(SimpleNamespace(confidence=95))


# --- The judge on stored answers --------------------------------------------------------------


@pytest.fixture
def pair(db):
    """active and candidate with different outputs on 24 held-out prompts."""
    active, candidate = add_version("base"), add_version("run-1")
    prompts = [f"What is {a}+3?" for a in range(24)]
    add_heldout_outputs(active, {p: "wrong" for p in prompts})
    add_heldout_outputs(candidate, {p: "right" for p in prompts})
    return candidate, active


def test_the_judge_waits_then_promotes_with_one_sentence_of_evidence(pair):
    candidate, active = pair
    pairwise = judge_module("pairwise")
    policy = SimpleNamespace()  # a policy from before the gate's new fields
    assert pairwise.judge(candidate, active, policy).outcome == Outcome.INCONCLUSIVE  # not started
    pairwise.start(candidate, active, policy)
    comparison = Comparison.objects.get()
    assert comparison.requested_by is None and comparison.items.count() == 24
    verdict = pairwise.judge(candidate, active, policy)
    assert (verdict.judge, verdict.outcome) == ("pairwise", Outcome.WAIT)
    assert verdict.sentence.startswith("no blind comparison answered yet (0 of 24)")

    annotator = make_annotator("alice")
    items = list(comparison.items.select_related("left_output"))
    for index, item in enumerate(items[:20]):
        answer(item, annotator, candidate if index < 16 else ("tie" if index < 18 else active))
    verdict = pairwise.judge(candidate, active, policy)
    # 16 wins, 2 ties, 2 losses: 17 of 20 = 85 %, Wilson 95 % 64–95 %.
    assert verdict.outcome == Outcome.PROMOTE
    assert verdict.sentence == (
        "candidate wins 85 % of 20 blind comparisons (2 ties counted half), 95 % CI 64–95 %: promoted"
    )
    assert verdict.evidence["win_rate"] == pytest.approx(0.85) and verdict.evidence["identical_outputs_skipped"] == 0
    # Decided: its items are no longer served to annotators.
    assert Comparison.objects.get(pk=comparison.pk).closed_at is not None


def test_the_judge_rejects_a_worse_candidate_and_the_policy_confidence_is_used(pair):
    candidate, active = pair
    pairwise = judge_module("pairwise")
    pairwise.start(candidate, active, None)
    annotator = make_annotator("alice")
    items = list(Comparison.objects.get().items.select_related("left_output"))
    for index, item in enumerate(items[:20]):
        answer(item, annotator, active if index < 15 else candidate)
    # 25 % of 20: at 99 % the interval (9–54 %) still spans 50 %, at 95 % (11–47 %) it does not.
    strict = pairwise.judge(candidate, active, SimpleNamespace(confidence=0.99))
    assert strict.outcome == Outcome.WAIT
    assert strict.sentence.startswith("candidate wins 25 % of 20 blind comparisons, 99 % CI 9–54 %: waiting")
    verdict = pairwise.judge(candidate, active, {"confidence": 0.95})
    assert verdict.outcome == Outcome.REJECT
    assert verdict.sentence == "candidate wins 25 % of 20 blind comparisons, 95 % CI 11–47 %: not promoted (worse)"


def test_identical_outputs_everywhere_are_inconclusive(db):
    active, candidate = add_version("base"), add_version("run-1")
    for version in (active, candidate):
        add_heldout_outputs(version, {f"What is {a}+1?": str(a + 1) for a in range(30)})
    pairwise = judge_module("pairwise")
    pairwise.start(candidate, active, None)
    verdict = pairwise.judge(candidate, active, None)
    assert verdict.outcome == Outcome.INCONCLUSIVE
    assert verdict.sentence == (
        "The two versions answered all 30 held-out prompts alike: nothing to compare blind, not promoted"
    )
