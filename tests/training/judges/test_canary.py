"""The canary's decision rule on vote counts (the whole canary through the API: test_gate.py)."""

from __future__ import annotations

from training.judges import Outcome
from training.judges.canary import decide

RULE = {"confidence": 0.95, "min_votes": 50, "max_votes": 400, "share": 0.1}


def _counts(up_c, n_c, up_a, n_a):
    return {"candidate": (up_c, n_c), "active": (up_a, n_a), "unattributed": 0}


def test_below_the_minimum_votes_the_canary_waits():
    verdict = decide(_counts(49, 49, 0, 500), **RULE)
    assert verdict.outcome == Outcome.WAIT
    assert verdict.sentence == (
        "canary (10 % of traffic): 49 of 50 end-user votes on the candidate, 500 of 50 on the active version so far: collecting"
    )


def test_better_promotes_worse_rolls_back_unclear_waits_then_stops():
    better = decide(_counts(45, 60, 250, 500), **RULE)  # 75 % vs 50 %
    assert better.outcome == Outcome.PROMOTE
    assert better.sentence.startswith("canary: candidate 75 % thumbs up of 60 end-user votes vs active 50 % of 500")
    assert better.evidence["p_better"] < 0.025
    worse = decide(_counts(20, 60, 250, 500), **RULE)  # 33 % vs 50 %
    assert worse.outcome == Outcome.REJECT and "rolled back" in worse.sentence
    unclear = decide(_counts(31, 60, 250, 500), **RULE)  # 52 % vs 50 %
    assert unclear.outcome == Outcome.WAIT and "collecting" in unclear.sentence
    stopped = decide(_counts(210, 400, 250, 500), **RULE)
    assert stopped.outcome == Outcome.INCONCLUSIVE and "after 400 votes a side" in stopped.sentence
