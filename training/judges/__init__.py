"""The gate's judges: each looks at one kind of evidence about a candidate and the active version.

A judge module exposes two functions (looked up by name in JUDGES, so a judge can be added without
the gate importing every module):

- ``start(candidate, active, policy) -> None``: begin collecting evidence (e.g. create blind
  comparison items, open a canary). Called once when the gate takes up the candidate. May do
  nothing for judges that measure at once.
- ``judge(candidate, active, policy) -> Verdict``: the judge's current verdict. Judges that need
  people or traffic answer WAIT until they have enough evidence; the gate asks again later.

Every verdict states its evidence in one sentence, e.g. "candidate wins 61 % of 212 blind
comparisons, 95 % CI 54–68 %: promoted".

Optional, for judges that need them (the gate looks them up with getattr):
- ``COLLECTS_EVIDENCE = True``: the judge gathers evidence over time (people, traffic). The gate
  starts such judges only after every judge that measures at once said PROMOTE, so a candidate that
  fails offline is never shown to annotators or end users.
- ``finish(candidate, active, policy) -> None``: called once when the gate has decided (or failed,
  or an admin decided by hand while the judge waited), to close what start() opened (the canary
  stops routing traffic to the candidate).

``policy`` is a training.models.TrainingPolicy (an unsaved copy: the project's row with the gate
options the candidate's run recorded; see training.policy.gate_policy): judge_names, confidence,
judge_prompts, min_holdout_examples, canary_*, llm_judge_* ... Verdict.evidence may carry
"candidate_metrics" (merged into the top level of the candidate's metrics, e.g. {"demo_accuracy"})
and "active_metrics" (added to the active version's metrics where it lacks them). The statistics
shared by the judges are in training.judges.statistics.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    PROMOTE = "promote"  # the evidence says the candidate is better at the configured confidence
    REJECT = "reject"  # the evidence says it is not better (or is worse): do not promote
    WAIT = "wait"  # still collecting evidence (comparisons, canary traffic): ask again later
    INCONCLUSIVE = "inconclusive"  # cannot judge (e.g. holdout below the minimum size): not promoted


@dataclass(frozen=True)
class Verdict:
    judge: str
    outcome: Outcome
    sentence: str
    evidence: dict = field(default_factory=dict)


# name → module (dotted path); each module defines start() and judge() as above.
JUDGES = {
    "demo": "training.judges.demo",
    "heldout": "training.judges.heldout",
    "pairwise": "training.judges.pairwise",
    "canary": "training.judges.canary",
    "llm": "training.judges.llm",
}


def judge_module(name: str):
    """The module of a judge by name; KeyError names the known judges."""
    if name not in JUDGES:
        raise KeyError(f"unknown judge {name!r}; known judges: {', '.join(JUDGES)}")
    return importlib.import_module(JUDGES[name])
