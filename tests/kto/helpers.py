"""Helpers shared by the engine's tests (not fixtures: plain functions)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small, fast settings (the demo model learns quickly at this rate), every schedule flag explicit.
FAST = [
    "--learning-rate",
    "1e-4",
    "--per-device-train-batch-size",
    "4",
    "--gradient-accumulation-steps",
    "2",
    "--max-length",
    "32",
    "--num-train-epochs",
    "1",
    "--warmup-ratio",
    "0.1",
    "--logging-steps",
    "1",
    "--save-steps",
    "0",
    "--no-gradient-checkpointing",
    "--no-progress",
]


def summary_of(result) -> dict:
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout  # exactly one JSON line on stdout
    return json.loads(lines[0])


def metrics_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def private_copy(path: str, directory: Path) -> str:
    """A copy of a data file in its own directory, so its reference cache starts empty."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / Path(path).name
    shutil.copyfile(path, target)
    return str(target)


@dataclass(frozen=True)
class Trained:
    """A finished `train` run: its one-line summary, its metrics.jsonl records, its output folder."""

    summary: dict
    metrics: list[dict]
    out: Path


def _train_arguments(model: str, data: str, out: Path, options: tuple[str, ...], fast: bool) -> list[str]:
    return ["train", "--model", model, "--data", data, "--out", str(out), *(FAST if fast else ()), *options]


def train(run_cli, model: str, data: str, out: Path, *options: str, fast: bool = True) -> Trained:
    """`python -m training.kto train --model MODEL --data DATA --out OUT [FAST] OPTIONS...` (the
    run_cli fixture: its own process, as the web app runs it), then what it wrote: the summary line
    and every metrics record."""
    result = run_cli(*_train_arguments(model, data, out, options, fast))
    return Trained(summary_of(result), metrics_of(out), Path(out))


def train_here(model: str, data: str, out: Path, *options: str, fast: bool = True) -> Trained:
    """The same command line through the engine's CLI in this process: no interpreter start-up and
    imports (about 4 CPU seconds a run). For tests of what training computes and writes, not of the
    process (exit codes, stderr, signals) and not mixing precisions (accelerate's state is shared
    within a process)."""
    import torch

    from training.kto import cli

    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as run_cli's OMP_NUM_THREADS=1: tiny matrices gain nothing from more
    try:
        with contextlib.redirect_stdout(printed):
            code = cli.main(_train_arguments(model, data, out, options, fast))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, f"exit {code}: {printed.getvalue()[-3000:]}"
    lines = printed.getvalue().strip().splitlines()
    assert len(lines) == 1, printed.getvalue()  # exactly one JSON line on stdout
    return Trained(json.loads(lines[0]), metrics_of(out), Path(out))


def run_launch(arguments: list[str], check: bool = True, **env_extra: str) -> subprocess.CompletedProcess:
    """A multi-process launch (accelerate launch ...) from the repository root, one torch thread per
    process, the engine importable; asserts exit 0 (with stderr) unless check=False."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **env_extra)
    result = subprocess.run(arguments, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result
