"""The `demo` judge: the demo task's program judge (is the sum right?) on held-out demo prompts.

Both versions answer the same `judge_prompts` held-out demo questions greedily
(`python -m training.kto demo-accuracy --per-example`). Promoted when the accuracy gain reaches the
policy's margin and an exact one-sided sign test over the prompts where exactly one version is
right says the candidate is better at the configured confidence (one-sided p ≤ (1 − c) / 2) (prompts both get right, or both
wrong, say nothing about which is better). A negative margin asks for no significance: it accepts
a candidate up to that much worse (what a test that wants every measured candidate promoted sets).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from training.judges import Outcome, Verdict
from training.judges.statistics import one_sided_alpha, percent, sign_test
from training.measurements import demo_judge_accuracy, read_jsonl
from training.policy import default_training_config

NAME = "demo"


def start(candidate, active, policy) -> None:
    """Nothing to collect: the program judges at once."""


def judge(candidate, active, policy) -> Verdict:
    n_prompts = int(policy.judge_prompts)
    run = candidate.created_by_run
    seed = int((run.config if run is not None else {}).get("seed", default_training_config(candidate.project)["seed"]))
    with tempfile.TemporaryDirectory(prefix="prospect-demo-judge-") as work_dir:
        rows = {}
        for side, version in (("candidate", candidate), ("active", active)):
            per_example = Path(work_dir) / f"{side}.jsonl"
            demo_judge_accuracy(version, n_prompts, seed, per_example=per_example)
            rows[side] = [bool(row["correct"]) for row in read_jsonl(per_example)]
    return decide(rows["candidate"], rows["active"], float(policy.promote_margin), float(policy.confidence))


def decide(candidate_correct: list[bool], active_correct: list[bool], margin: float, confidence: float) -> Verdict:
    n = len(candidate_correct)
    if n == 0 or n != len(active_correct):
        raise ValueError("both versions must be judged on the same, non-empty prompts")
    accuracy_candidate, accuracy_active = sum(candidate_correct) / n, sum(active_correct) / n
    gain = accuracy_candidate - accuracy_active
    wins = sum(c and not a for c, a in zip(candidate_correct, active_correct))
    losses = sum(a and not c for c, a in zip(candidate_correct, active_correct))
    p_value = sign_test(wins, losses)
    significant = p_value <= one_sided_alpha(confidence)
    promote = gain >= margin and (significant or margin < 0)
    if promote:
        ending = "promoted"
    elif gain < margin:
        ending = f"gain below the margin {margin:+.3f}, not promoted"
    else:
        ending = f"not better at {percent(confidence)} confidence, not promoted"
    sentence = (
        f"demo accuracy {accuracy_candidate:.3f} vs {accuracy_active:.3f} on {n} held-out prompts "
        f"(gain {gain:+.3f}; right where the active version is wrong on {wins}, the reverse on {losses}, "
        f"sign test p={p_value:.3g}): {ending}"
    )
    evidence = {
        "prompts": n,
        "split": "heldout",
        "candidate_accuracy": accuracy_candidate,
        "active_accuracy": accuracy_active,
        "gain": gain,
        "margin": margin,
        "wins": wins,
        "losses": losses,
        "p_value": p_value,
        "confidence": confidence,
        "candidate_metrics": {"demo_accuracy": accuracy_candidate},
        "active_metrics": {"demo_accuracy": accuracy_active},
    }
    return Verdict(NAME, Outcome.PROMOTE if promote else Outcome.REJECT, sentence, evidence)
