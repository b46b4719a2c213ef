"""The evaluation gate: a candidate is promoted only when every judge its policy chose says so.

The project's policy (training.policy.gate_policy: the row, with the gate options its run recorded)
names one or more judges (training.judges: demo, heldout, pairwise, canary, llm). For a pending
candidate the gate
1. stores both versions' greedy outputs on the project's fixed held-out prompts (HeldoutOutput,
   for the compare page and the judges that compare answers);
2. asks the judges that measure at once (start(), then judge()); then, only when all of them said
   PROMOTE, starts the judges that gather evidence over time (COLLECTS_EVIDENCE: blind comparisons,
   the canary) and asks them — so a candidate that fails offline never meets an end user;
3. decides: PROMOTE when every judge says PROMOTE; any REJECT or INCONCLUSIVE is final (not
   promoted; a canary's REJECT rejects the candidate: the automatic roll back); otherwise, some
   judge said WAIT: the candidate is "collecting evidence" and beat's periodic check
   (check_waiting_gates) asks the waiting judges again until they decide.

Each judge's verdict is one sentence with its evidence; the gate stores them all in the candidate's
metrics["gate"] ({"judges", "verdicts": {name: {"outcome", "sentence", "evidence"}}, "decision",
"reason", "evaluated_at"}) and the decision's reason, the sentences joined, in status_reason.

Gate states (ModelVersion.evaluation_state): pending → running → done | collecting | failed, and
collecting → done (or stays collecting). Every step is a conditional UPDATE (or a row lock), so a
redelivered task or two concurrent checks never act twice. `status` stays the single source of
truth for what serves: the gate only changes it through training.registry.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from training.judges import Outcome, Verdict, judge_module
from training.measurements import (  # noqa: F401  (re-exported: the compare page's data)
    HELDOUT_OUTPUT_PROMPTS,
    GateError,
    heldout_prompts,
    holdout_path,
    store_heldout_outputs,
)
from training.models import ModelVersion
from training.policy import gate_policy
from training.registry import promote, reject
from training.selectors import active_version

logger = logging.getLogger(__name__)
State = ModelVersion.EvaluationState


def combine(verdicts: list[Verdict]) -> Outcome:
    """The gate's decision from its judges' verdicts: PROMOTE only when all say PROMOTE; a REJECT
    (else an INCONCLUSIVE) from any judge is final; otherwise someone still WAITs."""
    outcomes = {verdict.outcome for verdict in verdicts}
    if not verdicts:
        return Outcome.INCONCLUSIVE
    for final in (Outcome.REJECT, Outcome.INCONCLUSIVE):
        if final in outcomes:
            return final
    return Outcome.WAIT if Outcome.WAIT in outcomes else Outcome.PROMOTE


def collects_evidence(name: str) -> bool:
    return bool(getattr(judge_module(name), "COLLECTS_EVIDENCE", False))


def _record(verdicts: list[Verdict], names: list[str], outcome: Outcome) -> dict:
    decision = {
        Outcome.PROMOTE: "promoted",
        Outcome.WAIT: "collecting evidence",
        Outcome.REJECT: "not promoted",
        Outcome.INCONCLUSIVE: "not promoted (inconclusive)",
    }[outcome]
    return {
        "judges": names,
        "verdicts": {
            verdict.judge: {"outcome": str(verdict.outcome), "sentence": verdict.sentence, "evidence": verdict.evidence}
            for verdict in verdicts
        },
        "decision": decision,
        "reason": "; ".join(verdict.sentence for verdict in verdicts),
        "evaluated_at": timezone.now().isoformat(),
    }


def _stored_verdicts(version: ModelVersion) -> dict[str, Verdict]:
    stored = ((version.metrics or {}).get("gate") or {}).get("verdicts") or {}
    return {
        name: Verdict(name, Outcome(row["outcome"]), row.get("sentence", ""), row.get("evidence") or {})
        for name, row in stored.items()
    }


def _finish_judges(version: ModelVersion, active: ModelVersion | None, policy, names) -> None:
    """Let each started judge close what it opened (the canary stops routing traffic to the candidate)."""
    for name in names:
        finish = getattr(judge_module(name), "finish", None)
        if finish is not None:
            finish(version, active, policy)


def _candidate_metrics(version: ModelVersion, verdicts: list[Verdict]) -> dict:
    """The candidate's metrics: its own numbers from the judges at the top (the Models page shows
    them side by side with other versions'); the gate record is added by the caller."""
    metrics = {key: value for key, value in (version.metrics or {}).items() if key != "gate"}
    for verdict in verdicts:
        metrics.update(verdict.evidence.get("candidate_metrics") or {})
    return metrics


def _settle(
    version: ModelVersion, active: ModelVersion, policy, verdicts: list[Verdict], *, expected: str
) -> ModelVersion:
    """Store the verdicts and act on their combined outcome, if the version is still in `expected` state."""
    names = policy.judge_names
    outcome = combine(verdicts)
    record = _record(verdicts, names, outcome)
    metrics = {**_candidate_metrics(version, verdicts), "gate": record}
    reason = record["reason"]
    with transaction.atomic():
        if outcome == Outcome.WAIT:
            waiting = "; ".join(v.sentence for v in verdicts if v.outcome == Outcome.WAIT)
            ModelVersion.objects.filter(pk=version.pk, evaluation_state=expected).update(
                metrics=metrics,
                evaluation_state=State.COLLECTING,
                status_reason=f"collecting evidence: {waiting}"[:4000],
            )
            return ModelVersion.objects.get(pk=version.pk)
        claimed = ModelVersion.objects.filter(pk=version.pk, evaluation_state=expected).update(
            metrics=metrics, evaluation_state=State.DONE
        )
        if not claimed:
            return ModelVersion.objects.get(pk=version.pk)
        _finish_judges(version, active, policy, [v.judge for v in verdicts])
        for verdict in verdicts:
            shown = verdict.evidence.get("active_metrics")
            if shown and active is not None:
                # Show the active version's numbers on the Models page too (same prompts, same judge).
                current = ModelVersion.objects.get(pk=active.pk).metrics or {}
                missing = {key: value for key, value in shown.items() if key not in current}
                if missing:
                    ModelVersion.objects.filter(pk=active.pk).update(metrics={**current, **missing})
        version.refresh_from_db()
        if version.status != ModelVersion.Status.CANDIDATE:
            return version  # an admin promoted or rejected it meanwhile: their decision stands
        if outcome == Outcome.PROMOTE:
            return promote(version, reason=f"auto-promoted by the gate: {reason}"[:4000])
        rolled_back = [v for v in verdicts if v.outcome == Outcome.REJECT and collects_evidence(v.judge)]
        if rolled_back:
            # Evidence gathered over time (blind comparisons, live traffic) says it is worse: reject it
            # (a canary's traffic already went back to the active version with finish()).
            reject(version, f"rejected by the gate: {reason}"[:4000])
        else:
            ModelVersion.objects.filter(pk=version.pk).update(status_reason=f"not promoted: {reason}"[:4000])
    return ModelVersion.objects.get(pk=version.pk)


def _ask(names, version, active, policy) -> list[Verdict]:
    verdicts = []
    for name in names:
        verdict = judge_module(name).judge(version, active, policy)
        logger.info("gate of %s: %s says %s: %s", version.name, name, verdict.outcome, verdict.sentence)
        verdicts.append(verdict)
    return verdicts


def evaluate_candidate(version: ModelVersion) -> ModelVersion:
    """Run the gate for a pending candidate (pending → running is a conditional UPDATE, so a
    redelivered gate task does nothing)."""
    claimed = ModelVersion.objects.filter(pk=version.pk, evaluation_state=State.PENDING).update(
        evaluation_state=State.RUNNING
    )
    if not claimed:
        return ModelVersion.objects.get(pk=version.pk)
    version = ModelVersion.objects.select_related("created_by_run", "project").get(pk=version.pk)
    run = version.created_by_run
    policy = gate_policy(run.config if run is not None else None, version.project)
    active = active_version(version.project)
    started: list[str] = []
    try:
        if active is None:
            # Nothing to beat: the first trained version is better than no model at all.
            metrics = {"gate": {"decision": "promoted", "reason": "no active version to compare with"}}
            with transaction.atomic():
                ModelVersion.objects.filter(pk=version.pk).update(metrics=metrics, evaluation_state=State.DONE)
                return promote(version, reason="no version was active")
        path = holdout_path(version)
        shown_prompts = heldout_prompts(path) if path is not None else []
        if shown_prompts:
            # The active version's outputs too, the first time a candidate is compared with it.
            store_heldout_outputs(version, shown_prompts)
            store_heldout_outputs(active, shown_prompts)
        names = policy.judge_names
        at_once = [name for name in names if not collects_evidence(name)]
        over_time = [name for name in names if collects_evidence(name)]
        for name in at_once:
            judge_module(name).start(version, active, policy)
            started.append(name)
        verdicts = _ask(at_once, version, active, policy)
        if over_time and (not verdicts or combine(verdicts) in (Outcome.PROMOTE, Outcome.WAIT)):
            for name in over_time:
                judge_module(name).start(version, active, policy)
                started.append(name)
            verdicts += _ask(over_time, version, active, policy)
        if shown_prompts:
            for verdict in verdicts:
                verdict.evidence.setdefault("heldout_output_prompts", len(shown_prompts))
    except Exception as exc:
        logger.exception("the gate could not evaluate %s", version.name)
        _finish_judges(version, active, policy, started)
        ModelVersion.objects.filter(pk=version.pk, evaluation_state=State.RUNNING).update(
            evaluation_state=State.FAILED,
            status_reason=f"evaluation failed, not promoted: {type(exc).__name__}: {exc}"[:4000],
        )
        return ModelVersion.objects.get(pk=version.pk)
    version.refresh_from_db()
    return _settle(version, active, policy, verdicts, expected=State.RUNNING)


def recheck_candidate(version: ModelVersion) -> ModelVersion:
    """Ask the judges that said WAIT again, for a candidate that is collecting evidence.

    The version's row is locked (skip_locked: a concurrent check leaves it alone) for the whole
    check, which reads the database only (the waiting judges count comparisons and votes).
    """
    with transaction.atomic():
        locked = (
            ModelVersion.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk=version.pk, evaluation_state=State.COLLECTING)
            .select_related("created_by_run", "project")
            .first()
        )
        if locked is None:
            return ModelVersion.objects.get(pk=version.pk)
        version = locked
        run = version.created_by_run
        policy = gate_policy(run.config if run is not None else None, version.project)
        active = active_version(version.project)
        stored = _stored_verdicts(version)
        if version.status != ModelVersion.Status.CANDIDATE or active is None:
            # Promoted or rejected by hand while the judges waited: close them, the admin decided.
            _finish_judges(version, active, policy, list(stored))
            ModelVersion.objects.filter(pk=version.pk).update(evaluation_state=State.DONE)
            return ModelVersion.objects.get(pk=version.pk)
        verdicts = [
            judge_module(name).judge(version, active, policy) if verdict.outcome == Outcome.WAIT else verdict
            for name, verdict in stored.items()
        ]
        return _settle(version, active, policy, verdicts, expected=State.COLLECTING)


def check_waiting_gates() -> list[int]:
    """Beat's periodic check: ask again for every candidate collecting evidence; returns their ids."""
    checked = []
    for version in ModelVersion.objects.filter(evaluation_state=State.COLLECTING).order_by("pk"):
        try:
            recheck_candidate(version)
        except Exception:
            # One project's broken judge must not stop the others' checks; it is asked again next time.
            logger.exception("the gate could not check %s again", version.name)
        checked.append(version.pk)
    return checked
