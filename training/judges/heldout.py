"""The `heldout` judge: the candidate's and the active version's KTO loss on the run's held-out
examples, compared example by example with a paired bootstrap.

Both versions are scored by `python -m training.kto evaluate --per-example` against the same
reference (the base model their line descends from), so an example's loss means the same for both.

Why a paired bootstrap of the per-example loss difference, not a sign test: the loss is
continuous, and how much better matters (a sign test counts a 0.001 improvement like a 0.3 one and
has little power on the small holdouts a young project has); the bootstrap's interval of the mean
improvement is also what the verdict sentence reports. It is paired (each resample keeps an
example's two losses together), so the large example-to-example variation that both models share
cancels. It makes no normality assumption, and it is seeded, so a verdict is reproducible.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from training.judges import Outcome, Verdict
from training.judges.statistics import paired_bootstrap, percent
from training.measurements import count_rows, holdout_metrics, holdout_path, lineage_root, read_jsonl
from training.policy import default_training_config

NAME = "heldout"


def start(candidate, active, policy) -> None:
    """Nothing to collect: the held-out examples are there when the run finishes."""


def judge(candidate, active, policy) -> Verdict:
    path = holdout_path(candidate)
    n_examples = count_rows(path)
    minimum = int(policy.min_holdout_examples)
    if n_examples < minimum:
        return Verdict(
            NAME,
            Outcome.INCONCLUSIVE,
            f"held-out set has {n_examples} examples, fewer than the minimum of {minimum}: inconclusive, not promoted",
            {"holdout_examples": n_examples, "min_holdout_examples": minimum},
        )
    run = candidate.created_by_run
    config = {**default_training_config(candidate.project), **(run.config if run is not None else {})}
    reference = lineage_root(active).artifact_path
    with tempfile.TemporaryDirectory(prefix="prospect-heldout-judge-") as work_dir:
        rows, metrics = {}, {}
        for side, version in (("candidate", candidate), ("active", active)):
            per_example = Path(work_dir) / f"{side}.jsonl"
            metrics[side] = holdout_metrics(
                version, path, reference_dir=reference, config=config, per_example=per_example
            )
            metrics[side].pop("per_example", None)
            rows[side] = read_jsonl(per_example)
    return decide(rows["candidate"], rows["active"], float(policy.confidence), metrics=metrics, reference=reference)


def decide(candidate_rows: list[dict], active_rows: list[dict], confidence: float, **context) -> Verdict:
    """The verdict from both versions' per-example rows ({"loss", "correct", ...}, same examples, same order)."""
    if len(candidate_rows) != len(active_rows):
        raise ValueError(f"{len(candidate_rows)} candidate rows against {len(active_rows)} active rows")
    # The candidate's advantage on each example: how much lower its loss is.
    improvements = [a["loss"] - c["loss"] for c, a in zip(candidate_rows, active_rows)]
    result = paired_bootstrap(improvements, confidence)
    n = result.n
    accuracy = {
        side: sum(bool(row["correct"]) for row in rows) / n if n else 0.0
        for side, rows in (("candidate", candidate_rows), ("active", active_rows))
    }
    better = result.better()
    outcome = Outcome.PROMOTE if better else Outcome.REJECT
    level = percent(confidence)
    sentence = (
        f"candidate {'lowers' if result.mean >= 0 else 'raises'} the held-out KTO loss by "
        f"{abs(result.mean):.4f} per example on {n} examples ({level} CI of the improvement "
        f"{result.low:+.4f} to {result.high:+.4f}, paired bootstrap; reward accuracy "
        f"{percent(accuracy['candidate'])} vs {percent(accuracy['active'])}): "
        f"{'promoted' if better else 'not better at ' + level + ' confidence, not promoted'}"
    )
    evidence = {
        "holdout_examples": n,
        "test": "paired bootstrap of the per-example KTO loss difference",
        "mean_improvement": result.mean,
        "ci_low": result.low,
        "ci_high": result.high,
        "p_value": result.p_value,
        "confidence": confidence,
        "reward_accuracy": accuracy,
    }
    metrics = context.get("metrics")
    if metrics:
        # The candidate's own numbers go to the top of its metrics (the Models page columns).
        evidence["candidate_metrics"] = {"holdout": metrics["candidate"]}
        evidence["active_holdout"] = metrics["active"]
        evidence["holdout_reference"] = context.get("reference")
    return Verdict(NAME, outcome, sentence, evidence)
