"""The evaluation gate: a candidate is promoted only when it beats the active version.

For a candidate produced by a run, both the candidate and the currently active version are
measured on the run's snapshot holdout with `python -m training.kto evaluate` (KTO loss and
reward accuracy, implied rewards of both taken against the same reference: the base model their
line descends from, so the numbers are comparable; the base itself scores reward 0 everywhere,
i.e. no separation of good from bad), and — when the policy's judge is "demo" — on generated outputs: greedy
completions for held-out demo prompts judged by the demo task's simulated annotator
(`python -m training.kto demo-accuracy`). Each measurement runs in its own subprocess so the worker
never holds model weights (GPU memory) between tasks.

Decision (margin = the run config's promote_margin, from the admin-editable policy):
- with a judge: promote iff accuracy(candidate) − accuracy(active) ≥ margin;
- without one: promote iff holdout reward accuracy(candidate) − reward accuracy(active) ≥ margin
  and the candidate's holdout KTO loss is not higher than the active version's.
Otherwise the version stays a candidate and status_reason says why (an admin may still promote
or reject it by hand). All numbers are stored in the candidate's `metrics`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import ModelVersion, TrainingPolicy
from training.policy import default_training_config
from training.registry import promote
from training.selectors import active_version

logger = logging.getLogger(__name__)


class GateError(RuntimeError):
    """A measurement subprocess failed; the message carries its stderr tail."""


def _run_json(command: list[str], what: str) -> dict:
    """Run a measurement subprocess and parse the last JSON line it printed."""
    result = subprocess.run(
        command,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=settings.PROSPECT_EVAL_TIMEOUT_SECONDS,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise GateError(f"{what} exited with code {result.returncode}:\n{result.stderr[-2000:]}")
    for line in reversed(result.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise GateError(f"{what} printed no JSON line:\n{result.stdout[-1000:]}")


def lineage_root(version: ModelVersion) -> ModelVersion:
    """The first version of a version's line (the base model every later version descends from)."""
    seen = set()
    while version.parent_id is not None and version.pk not in seen:
        seen.add(version.pk)
        version = version.parent
    return version


def holdout_metrics(version: ModelVersion, holdout_path: Path, *, reference_dir: str, config: dict) -> dict:
    """`python -m training.kto evaluate` of a version on a holdout file (one JSON line of metrics).

    Implied rewards are measured against `reference_dir` — the same one for the candidate and the
    active version, so their reward accuracies and losses are comparable. (An adapter is always
    measured against its own base with the adapter disabled: that is how the engine defines it.)
    """
    command = [
        sys.executable,
        "-m",
        "training.kto",
        "evaluate",
        "--model",
        version.artifact_path,
        "--data",
        str(holdout_path),
        "--reference",
        reference_dir,
        "--beta",
        repr(float(config["beta"])),
        "--max-length",
        str(int(config["max_length"])),
        "--batch-size",
        str(max(2, int(config["per_device_train_batch_size"]))),
    ]
    return _run_json(command, f"evaluate {version.name}")


def demo_judge_accuracy(version: ModelVersion, n_prompts: int, seed: int) -> float:
    """Greedy exact-match accuracy of a version on `n_prompts` held-out demo prompts."""
    command = [
        sys.executable,
        "-m",
        "training.kto",
        "demo-accuracy",
        "--model",
        version.artifact_path,
        "--prompts",
        str(n_prompts),
        "--seed",
        str(seed),
    ]
    return float(_run_json(command, f"demo judge of {version.name}")["demo_accuracy"])


def _count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0


def decide(measurements: dict, margin: float, judged: bool) -> tuple[bool, str]:
    """(promote?, reason) from the candidate's and the active version's measurements."""
    candidate, active = measurements["candidate"], measurements["active"]
    if judged:
        gain = candidate["demo_accuracy"] - active["demo_accuracy"]
        verdict = (
            f"demo accuracy {candidate['demo_accuracy']:.3f} vs {active['demo_accuracy']:.3f} "
            f"of {measurements['active_version']} (gain {gain:+.3f}, margin {margin:+.3f})"
        )
        return gain >= margin, verdict
    if "holdout" not in candidate or "holdout" not in active:
        return False, "no holdout examples and no judge: nothing to compare, promote by hand if wanted"
    cand_acc, act_acc = candidate["holdout"]["reward_accuracy"], active["holdout"]["reward_accuracy"]
    cand_loss, act_loss = candidate["holdout"]["loss"], active["holdout"]["loss"]
    gain = cand_acc - act_acc
    verdict = (
        f"holdout reward accuracy {cand_acc:.3f} vs {act_acc:.3f} (gain {gain:+.3f}, margin {margin:+.3f}), "
        f"KTO loss {cand_loss:.4f} vs {act_loss:.4f} of {measurements['active_version']}"
    )
    return gain >= margin and cand_loss <= act_loss, verdict


def evaluate_candidate(version: ModelVersion) -> ModelVersion:
    """Measure a pending candidate against the active version and promote it if it is better.

    Only a version whose evaluation_state is pending is evaluated (pending → running is a
    conditional UPDATE), so a redelivered gate task does nothing.
    """
    claimed = ModelVersion.objects.filter(pk=version.pk, evaluation_state=ModelVersion.EvaluationState.PENDING).update(
        evaluation_state=ModelVersion.EvaluationState.RUNNING
    )
    if not claimed:
        return ModelVersion.objects.get(pk=version.pk)
    version = ModelVersion.objects.select_related("created_by_run").get(pk=version.pk)
    run = version.created_by_run
    # The run's own config; the policy's defaults for what it lacks (a version without a run, or a
    # run recorded before an option existed).
    config = {**default_training_config(version.project), **(run.config if run is not None else {})}
    margin = float(config["promote_margin"])
    judged = config["judge"] == TrainingPolicy.Judge.DEMO
    try:
        active = active_version(version.project)
        if active is None:
            # Nothing to beat: the first trained version is better than no model at all.
            metrics = {"gate": {"decision": "promoted", "reason": "no active version to compare with"}}
            with transaction.atomic():
                ModelVersion.objects.filter(pk=version.pk).update(
                    metrics=metrics, evaluation_state=ModelVersion.EvaluationState.DONE
                )
                return promote(version, reason="no version was active")
        measurements = {"active_version": active.name, "candidate": {}, "active": {}}
        holdout_path = Path(run.artifact_dir) / "data" / "holdout.jsonl" if run is not None else None
        # The engine needs two examples at least (z0 pairs each prompt with another completion).
        if holdout_path is not None and _count_rows(holdout_path) >= 2:
            reference = lineage_root(active).artifact_path
            measurements["holdout_examples"] = _count_rows(holdout_path)
            measurements["holdout_reference"] = reference
            measurements["candidate"]["holdout"] = holdout_metrics(
                version, holdout_path, reference_dir=reference, config=config
            )
            measurements["active"]["holdout"] = holdout_metrics(
                active, holdout_path, reference_dir=reference, config=config
            )
        if judged:
            n_prompts = int(config["judge_prompts"])
            seed = int(config["seed"])
            measurements["judge"] = {"name": "demo simulated annotator", "prompts": n_prompts, "split": "heldout"}
            measurements["candidate"]["demo_accuracy"] = demo_judge_accuracy(version, n_prompts, seed)
            measurements["active"]["demo_accuracy"] = demo_judge_accuracy(active, n_prompts, seed)
        better, verdict = decide(measurements, margin, judged)
    except Exception as exc:
        logger.exception("the gate could not evaluate %s", version.name)
        ModelVersion.objects.filter(pk=version.pk).update(
            evaluation_state=ModelVersion.EvaluationState.FAILED,
            status_reason=f"evaluation failed, not promoted: {type(exc).__name__}: {exc}"[:4000],
        )
        return ModelVersion.objects.get(pk=version.pk)

    # The candidate's own numbers at the top level (the Models page shows them side by side); the
    # gate's record holds what it was compared with and the verdict.
    compared = {key: value for key, value in measurements.items() if key != "candidate"}
    metrics = {
        **measurements["candidate"],
        "gate": {
            **compared,
            "margin": margin,
            "decision": "promoted" if better else "kept as candidate",
            "reason": verdict,
            "evaluated_at": timezone.now().isoformat(),
        },
    }
    with transaction.atomic():
        ModelVersion.objects.filter(pk=version.pk).update(
            metrics=metrics, evaluation_state=ModelVersion.EvaluationState.DONE
        )
        if "demo_accuracy" in measurements["active"] and "demo_accuracy" not in (active.metrics or {}):
            # Show the active version's accuracy on the Models page too (same prompts, same judge).
            ModelVersion.objects.filter(pk=active.pk).update(
                metrics={**(active.metrics or {}), "demo_accuracy": measurements["active"]["demo_accuracy"]}
            )
        version.refresh_from_db()
        if better and version.status == ModelVersion.Status.CANDIDATE:
            return promote(version, reason=f"auto-promoted by the gate: {verdict}")
        if version.status == ModelVersion.Status.CANDIDATE:
            ModelVersion.objects.filter(pk=version.pk).update(status_reason=f"not promoted: {verdict}")
    return ModelVersion.objects.get(pk=version.pk)
