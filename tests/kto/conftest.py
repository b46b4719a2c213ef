"""Engine-only fixtures: a small simulated-feedback dataset from the demo model, and each real
tokenizer family in turn (bpe_model_dir / sentencepiece_model_dir live in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def feedback_jsonl(demo_model_dir, tmp_path_factory) -> str:
    """~600 KTO rows: demo-model samples on train prompts labelled by the simulated annotator."""
    from training.kto.demo_feedback import simulated_feedback, write_jsonl

    rows = simulated_feedback(demo_model_dir, n_prompts=300, seed=1, samples_per_prompt=2)
    return write_jsonl(rows, tmp_path_factory.mktemp("feedback") / "feedback.jsonl")


@pytest.fixture(params=["bpe", "sentencepiece"])
def family_model_dir(request, bpe_model_dir, sentencepiece_model_dir) -> str:
    """Each tokenizer family in turn."""
    return bpe_model_dir if request.param == "bpe" else sentencepiece_model_dir


@pytest.fixture
def run_cli():
    """`run_cli("train", "--model", ...)` -> CompletedProcess; raises with stderr on failure unless check=False."""
    return _run_cli


def _run_cli(*args: str, check: bool = True, env_extra: dict | None = None, timeout: float = 600):
    """`python -m training.kto ...` in a subprocess, as the web app runs it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    result = subprocess.run(
        [sys.executable, "-m", "training.kto", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr[-3000:]}")
    return result
