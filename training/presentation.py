"""How the staff pages name and format what the loop stores: metric labels, deltas, run phases.

Pure functions of model rows and dicts, no queries: the views and templates share one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

# The metrics an admin compares versions on, in this order: (key in the flattened metrics,
# human label, True when higher is better). The rest of a version's metrics is under "details".
METRICS = (
    ("demo_accuracy", "Accuracy", True),
    ("holdout.loss", "Holdout loss", False),
    ("holdout.reward_accuracy", "Reward accuracy", True),
    ("holdout.reward_margin", "Reward margin", True),
    ("holdout.reward_desirable", "Reward (desirable)", True),
    ("holdout.reward_undesirable", "Reward (undesirable)", False),
    ("holdout.z0", "z0", None),
    ("holdout.n_examples", "Holdout examples", None),
)
# The columns of the Models table; the compare view shows every metric above.
TABLE_METRICS = ("demo_accuracy", "holdout.loss", "holdout.reward_accuracy")
PERCENT_METRICS = {"demo_accuracy", "holdout.reward_accuracy"}


def flatten_metrics(metrics: dict) -> dict:
    """{"holdout": {"loss": 0.4}, "demo_accuracy": 0.6} → {"holdout.loss": 0.4, "demo_accuracy": 0.6}."""
    flat = {}
    for name, value in (metrics or {}).items():
        if isinstance(value, dict):
            flat.update({f"{name}.{inner}": v for inner, v in value.items() if _is_scalar(v)})
        elif _is_scalar(value):
            flat[name] = value
    return flat


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def format_metric(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key in PERCENT_METRICS:
        return f"{100 * value:.1f} %"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


@dataclass
class MetricDelta:
    key: str
    label: str
    a: str
    b: str
    delta: str  # b − a, formatted; "" when either side is missing
    verdict: str  # "better" | "worse" | "same" | "" (b relative to a)


def metric_deltas(metrics_a: dict, metrics_b: dict) -> list[MetricDelta]:
    """Each known metric of two versions with b − a and whether that is an improvement."""
    flat_a, flat_b = flatten_metrics(metrics_a), flatten_metrics(metrics_b)
    rows = []
    for key, label, higher_is_better in METRICS:
        value_a, value_b = flat_a.get(key), flat_b.get(key)
        if value_a is None and value_b is None:
            continue
        delta, verdict = "", ""
        if isinstance(value_a, (int, float)) and isinstance(value_b, (int, float)):
            difference = value_b - value_a
            scale = 100 if key in PERCENT_METRICS else 1
            unit = " pt" if key in PERCENT_METRICS else ""
            delta = f"{difference * scale:+.4g}{unit}"
            if higher_is_better is not None:
                if abs(difference) < 1e-12:
                    verdict = "same"
                else:
                    verdict = "better" if (difference > 0) == higher_is_better else "worse"
        rows.append(MetricDelta(key, label, format_metric(key, value_a), format_metric(key, value_b), delta, verdict))
    return rows


def gate_verdict(version) -> str:
    """The gate's decision in one line ("" when the version was never gated)."""
    gate = (version.metrics or {}).get("gate") or {}
    if gate.get("decision"):
        return f"{gate['decision']}: {gate.get('reason', '')}".rstrip(": ")
    return version.status_reason or ""


@dataclass
class JudgeVerdict:
    judge: str
    outcome: str  # "promote" | "reject" | "wait" | "inconclusive"
    sentence: str


def judge_verdicts(metrics: dict) -> list[JudgeVerdict]:
    """Each judge's verdict the gate stored on a version, in the policy's order."""
    gate = (metrics or {}).get("gate") or {}
    verdicts = gate.get("verdicts") or {}
    order = [name for name in gate.get("judges") or [] if name in verdicts] + [
        name for name in verdicts if name not in (gate.get("judges") or [])
    ]
    return [JudgeVerdict(name, verdicts[name].get("outcome", ""), verdicts[name].get("sentence", "")) for name in order]


def canary_numbers(metrics: dict) -> dict | None:
    """The canary's counts for the run page: {"share", "rows": [(side, up, votes, rate)], "unattributed"}."""
    verdict = (((metrics or {}).get("gate") or {}).get("verdicts") or {}).get("canary")
    if not verdict:
        return None
    evidence = verdict.get("evidence") or {}
    rows = []
    for side, label in (("candidate", "Candidate"), ("active", "Active version")):
        up, votes = evidence.get(f"{side}_up", 0), evidence.get(f"{side}_votes", 0)
        rows.append((label, up, votes, f"{100 * up / votes:.1f} %" if votes else "—"))
    return {
        "share": f"{100 * float(evidence.get('share') or 0):g} %",
        "rows": rows,
        "min_votes": evidence.get("min_votes"),
        "unattributed": evidence.get("unattributed_votes", 0),
        "outcome": verdict.get("outcome", ""),
    }


# --- Run phases ----------------------------------------------------------------------------

PHASES = (
    ("queued", "Waiting for a worker"),
    ("preparing", "Preparing data"),
    ("reference", "Reference pass"),
    ("training", "Training"),
    ("evaluating", "Evaluating"),
    ("done", "Done"),
)
# Share of the overall bar each phase ends at: the bar moves from the first second, and the
# training steps (the long part) fill most of it.
_PHASE_END = {"queued": 0.0, "preparing": 0.03, "reference": 0.08, "training": 0.97, "evaluating": 0.99, "done": 1.0}
NEEDS_REFERENCE = {"kto", "no_z0", "concave", "risk_neutral", "dpo"}


def run_phase(progress: dict, config: dict) -> dict:
    """Where a run is, from what the runner stores: status, steps, metrics rows and the log tail.

    The engine does not report phases itself; this reads them off what exists. Running with no
    metrics row yet: "preparing data" until the engine has written output (it logs while loading
    weights), then the reference pass (when the loss needs one). Then step N of M. After the run
    succeeds, the gate evaluates the version it produced.
    Returns {"key", "label", "detail", "overall"} with overall ∈ [0, 1], never moving backwards.
    """
    status = progress["status"]
    step, total = progress.get("step") or 0, progress.get("total_steps")
    version = progress.get("version") or {}
    has_rows = bool((progress.get("metrics") or {}).get("step"))
    if status == "queued":
        return _phase("queued", "the run is queued; a training worker will pick it up", 0.0)
    if status == "running":
        if not has_rows and step == 0:
            if progress.get("log_tail", "").strip() and config.get("loss", "kto") in NEEDS_REFERENCE:
                return _phase("reference", "loading the model and scoring the data with the reference model", 0.03)
            return _phase("preparing", "exporting the snapshot and starting the engine", 0.0)
        fraction = min(1.0, step / total) if total else 0.0
        overall = 0.08 + (0.97 - 0.08) * fraction
        detail = f"step {step} of {total}" if total else f"step {step}"
        if total and step >= total:
            detail += ": saving the model"
        return _phase("training", detail, overall)
    if status == "succeeded":
        if version.get("evaluation_state") in ("pending", "running"):
            return _phase("evaluating", "the gate is comparing the new version with the active one", 1.0)
        if version.get("evaluation_state") == "collecting":
            return _phase("evaluating", "the gate's judges are collecting evidence (comparisons, live traffic)", 1.0)
        return _phase("done", "finished", 1.0)
    return _phase(status, status, progress.get("progress") or 0.0)


def _phase(key: str, detail: str, start: float) -> dict:
    label = dict(PHASES).get(key, key.capitalize())
    return {"key": key, "label": label, "detail": detail, "overall": round(max(0.0, min(1.0, start)), 4)}


def step_lines(rows: list, total_steps: int | None, last: int = 30) -> list[str]:
    """The last training steps as log lines (loss, z0, rewards, examples/s), from the run's metrics.jsonl rows."""
    lines = []
    for row in (rows if isinstance(rows, list) else [])[-last:]:
        if not isinstance(row, dict):
            continue
        parts = [f"step {row.get('step', '?')}" + (f"/{total_steps}" if total_steps else "")]
        for name, label in (
            ("loss", "loss"),
            ("z0", "z0"),
            ("reward_desirable", "r_D"),
            ("reward_undesirable", "r_U"),
            ("reward_accuracy", "acc"),
            ("examples_per_s", "ex/s"),
        ):
            number = row.get(name)
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                parts.append(f"{label} {number:.4g}")
        lines.append("  ".join(parts))
    return lines
