"""Measurements of model versions for the gate and its judges, each in its own subprocess.

Every measurement runs `python -m training.kto ...` in a subprocess so the worker never holds model
weights (GPU memory) between tasks: evaluate (holdout metrics, per example), demo-accuracy,
generate (greedy outputs on held-out prompts, stored as HeldoutOutput rows for the compare page
and the LLM judge).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings

from feedback.content import prompt_sha256
from training.models import HeldoutOutput, ModelVersion
from training.serving import DEFAULT_MAX_NEW_TOKENS

# How many held-out prompts every version gets greedy outputs on (shown on the compare page).
HELDOUT_OUTPUT_PROMPTS = 32

logger = logging.getLogger(__name__)


class GateError(RuntimeError):
    """A measurement subprocess failed; the message carries its stderr tail."""


def run_json(command: list[str], what: str) -> dict:
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


def holdout_path(version: ModelVersion) -> Path | None:
    """The holdout file of the run that produced a version (None for a version without a run)."""
    run = version.created_by_run
    if run is None or not run.artifact_dir:
        return None
    return Path(run.artifact_dir) / "data" / "holdout.jsonl"


def count_rows(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def holdout_metrics(
    version: ModelVersion, holdout_path: Path, *, reference_dir: str, config: dict, per_example: Path | None = None
) -> dict:
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
    if per_example is not None:
        command += ["--per-example", str(per_example)]
    return run_json(command, f"evaluate {version.name}")


def demo_judge_accuracy(version: ModelVersion, n_prompts: int, seed: int, per_example: Path | None = None) -> dict:
    """Greedy exact-match accuracy of a version on `n_prompts` held-out demo prompts: the command's
    JSON line ({"demo_accuracy", "prompts", "per_example"?})."""
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
    if per_example is not None:
        command += ["--per-example", str(per_example)]
    return run_json(command, f"demo judge of {version.name}")


def heldout_prompts(holdout_path: Path, limit: int = HELDOUT_OUTPUT_PROMPTS) -> list:
    """The first `limit` distinct prompts of a run's holdout file: the project's oldest held-out prompts.

    Snapshots list examples by prompt id and split by a hash of the prompt alone, so a prompt held
    out once stays held out and the oldest ones stay first as the data grows: every version of the
    project is shown on the same prompts.
    """
    prompts: dict[str, object] = {}
    try:
        with open(holdout_path, encoding="utf-8") as handle:
            for line in handle:
                if len(prompts) == limit:
                    break
                if line.strip():
                    prompt = json.loads(line)["prompt"]
                    prompts.setdefault(prompt_sha256(prompt), prompt)
    except FileNotFoundError:
        return []
    return list(prompts.values())


def store_heldout_outputs(version: ModelVersion, prompts: list) -> int:
    """Greedy outputs of a version on those of `prompts` it has none for yet; returns how many were added.

    Generated by `python -m training.kto generate` in its own process (like every measurement here),
    stored as HeldoutOutput rows: never served to annotators, never trained on.
    """
    by_sha = {prompt_sha256(prompt): prompt for prompt in prompts}
    stored = set(version.heldout_outputs.filter(prompt_sha256__in=list(by_sha)).values_list("prompt_sha256", flat=True))
    missing = [(sha, prompt) for sha, prompt in by_sha.items() if sha not in stored]
    if not missing:
        return 0
    with tempfile.TemporaryDirectory(prefix="prospect-heldout-") as work_dir:
        prompts_path, outputs_path = Path(work_dir) / "prompts.jsonl", Path(work_dir) / "outputs.jsonl"
        prompts_path.write_text(
            "".join(json.dumps({"prompt": prompt}, ensure_ascii=False) + "\n" for _, prompt in missing),
            encoding="utf-8",
        )
        command = [
            sys.executable,
            "-m",
            "training.kto",
            "generate",
            "--model",
            version.artifact_path,
            "--prompts",
            str(prompts_path),
            "--out",
            str(outputs_path),
            "--max-new-tokens",
            str(DEFAULT_MAX_NEW_TOKENS),
            "--temperature",
            "0",
        ]
        run_json(command, f"held-out outputs of {version.name}")
        rows = [json.loads(line) for line in outputs_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != len(missing):
        raise GateError(f"held-out outputs of {version.name}: {len(rows)} outputs for {len(missing)} prompts")
    HeldoutOutput.objects.bulk_create(
        [
            HeldoutOutput(version=version, prompt=prompt, prompt_sha256=sha, completion=row["completion"])
            for (sha, prompt), row in zip(missing, rows)
        ],
        ignore_conflicts=True,  # a concurrent gate run stored the same version's outputs first
    )
    return len(missing)


def _count_rows(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except FileNotFoundError:
        return 0
