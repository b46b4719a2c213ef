"""The demo model builds bit-identically everywhere (issue 7 problem 10): the same bytes from
processes with different thread counts and different CPU kernel sets (AVX2 vs the machine's own,
which is what differs between two machines).

The builds here are the recipe shortened to a few steps: the same code end to end (tokenizer,
model, optimizer, schedule, saving), just fewer steps. Any thread- or kernel-dependent rounding
shows in the weights from the first step on, so a short build proves what a full one would, at a
tenth of the time. (The full build is what the suite's demo_model_dir is; other tests check what it
can do.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

BUILD = (
    "import sys; from training.kto.demo import build_demo_model; "
    "build_demo_model(sys.argv[1], sft_steps=int(sys.argv[2]))"
)
SHORT_BUILD_STEPS = 16


@pytest.mark.slow
def test_two_builds_in_different_environments_are_byte_identical(tmp_path):
    environments = [
        {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"},
        {"OMP_NUM_THREADS": "2"},  # the machine's own kernels (AVX-512 where available)
    ]
    builds = []
    for index, extra in enumerate(environments):  # concurrently: each build uses one core
        env = {key: value for key, value in os.environ.items() if key != "ATEN_CPU_CAPABILITY"} | extra
        out = tmp_path / f"build-{index}"
        builds.append(
            (
                out,
                subprocess.Popen(
                    [sys.executable, "-c", BUILD, str(out), str(SHORT_BUILD_STEPS)],
                    cwd=REPO_ROOT,
                    env=env,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    for _out, process in builds:
        _, stderr = process.communicate(timeout=1200)
        assert process.returncode == 0, stderr[-3000:]
    first, second = (out / "model.safetensors" for out, _ in builds)
    assert first.read_bytes() == second.read_bytes()
    for name in ("tokenizer.json", "config.json", "demo_model.json"):
        assert (builds[0][0] / name).read_bytes() == (builds[1][0] / name).read_bytes(), name
