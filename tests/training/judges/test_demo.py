"""The demo judge's rule: the accuracy gain reaches the margin and a sign test over the prompts
where exactly one version is right says the candidate is better."""

from __future__ import annotations

from training.judges import Outcome
from training.judges.demo import decide


def _correct(pattern: str) -> list[bool]:
    return [c == "1" for c in pattern]


def test_a_clearly_better_candidate_is_promoted():
    # 15 prompts only the candidate gets right, 2 only the active version: p ≈ 0.0012.
    candidate = _correct("1" * 15 + "0" * 2 + "1" * 10 + "0" * 5)
    active = _correct("0" * 15 + "1" * 2 + "1" * 10 + "0" * 5)
    verdict = decide(candidate, active, margin=0.01, confidence=0.95)
    assert verdict.outcome == Outcome.PROMOTE, verdict.sentence
    assert verdict.evidence["wins"] == 15 and verdict.evidence["losses"] == 2
    assert verdict.evidence["candidate_metrics"] == {"demo_accuracy": 25 / 32}
    assert (
        verdict.sentence.startswith("demo accuracy 0.781 vs 0.375 on 32 held-out prompts")
        and "promoted" in verdict.sentence
    )


def test_a_gain_within_the_noise_is_not_promoted_however_large_the_margin_allows():
    # 3 wins, 1 loss: a gain of 0.0625, above the margin, but p = 0.31.
    candidate = _correct("1110" + "1" * 28)
    active = _correct("0001" + "1" * 28)
    verdict = decide(candidate, active, margin=0.01, confidence=0.95)
    assert verdict.outcome == Outcome.REJECT
    assert "not better at 95 % confidence" in verdict.sentence


def test_the_margin_still_applies_and_a_negative_one_asks_no_significance():
    same = _correct("10" * 16)
    assert decide(same, same, margin=0.01, confidence=0.95).outcome == Outcome.REJECT
    assert "below the margin" in decide(same, same, margin=0.01, confidence=0.95).sentence
    assert decide(same, same, margin=-1.0, confidence=0.95).outcome == Outcome.PROMOTE
