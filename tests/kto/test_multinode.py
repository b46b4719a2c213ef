"""Multi-node data parallelism: two accelerate launchers, one per "machine" (`--machine_rank 0` and
`1`, one process each), meeting at the head node's address over TCP. Here both machines are this
host (127.0.0.1); across hosts only the address changes. It must train exactly like two processes
on one machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.kto.helpers import run_launch
from training.kto.distributed import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]

TRAIN = ["--max-steps", "4", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2"]
SMALL = ["--max-length", "48", "--learning-rate", "1e-3", "--warmup-ratio", "0", "--logging-steps", "1"]


def _launcher(topology: list[str], port: int, model: str, data: str, out: Path | str) -> list[str]:
    return [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", *topology),
        *("--main_process_ip", "127.0.0.1", "--main_process_port", str(port)),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        *("-m", "training.kto", "train", "--model", model, "--data", data, "--out", str(out)),
        *(*TRAIN, *SMALL, "--bf16", "no", "--no-progress", "--expected-world-size", "2"),
    ]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _two_machines(port: int, model: str, data: str, out: str, cwds: list[Path], env: dict) -> list:
    """Both launchers at once, each in its directory; (process, stdout, stderr) per machine. Output
    goes to files: a machine blocked on a full pipe would stall the other at the next collective."""
    logs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in cwds]
    nodes = [
        subprocess.Popen(
            _launcher(
                ["--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2"], port, model, data, out
            ),
            cwd=cwd,
            env=env,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        for rank, (cwd, (stdout, stderr)) in enumerate(zip(cwds, logs))
    ]
    results = []
    for node, (stdout, stderr) in zip(nodes, logs):
        node.wait(timeout=600)
        stdout.seek(0)
        stderr.seek(0)
        results.append((node, stdout.read(), stderr.read()))
        stdout.close()
        stderr.close()
    return results


@pytest.mark.slow
def test_two_machines_with_one_process_each_train_like_two_processes_on_one(bpe_model_dir, feedback_jsonl, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    one_machine, two_machines = tmp_path / "one-machine", tmp_path / "two-machines"
    run_launch(_launcher(["--num_processes", "2"], free_port(), bpe_model_dir, feedback_jsonl, one_machine))

    # One --out for both, given as the same absolute path: what shared storage gives real nodes.
    results = _two_machines(free_port(), bpe_model_dir, feedback_jsonl, str(two_machines), [REPO_ROOT] * 2, env)
    for node, _, stderr in results:
        assert node.returncode == 0, stderr[-3000:]
    outputs = [(stdout, stderr) for _, stdout, stderr in results]

    # The head node's process is rank 0: it alone prints the summary and writes metrics and final/.
    assert json.loads(outputs[0][0].strip().splitlines()[-1])["steps"] == 4
    assert outputs[1][0].strip() == ""
    assert json.loads((two_machines / "config.json").read_text())["world_size"] == 2
    assert _losses(two_machines) == pytest.approx(_losses(one_machine), abs=1e-6)
    assert (two_machines / "final" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "private, message",
    [
        ("out", "process(es) [1] of 2 cannot see what the main process writes in --out out"),
        ("data", "the reference log-probs written by the main process are not visible to every process"),
    ],
)
def test_machines_that_do_not_share_out_or_the_reference_cache_are_refused(
    private, message, demo_model_dir, feedback_jsonl, tmp_path
):
    """Each "machine" runs in its own directory, and --out or --data is given as a relative path: the
    same name on two disks. What the main process writes there (checkpoints; the reference cache next
    to the data) would be invisible to the other, which would fail later with an obscure error; the
    engine stops both before the first step and says why."""
    # Blind after 1 s rather than the 30 s that a network file system's directory cache may need.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), PROSPECT_STORAGE_CHECK_SECONDS="1")
    cwds = [tmp_path / "machine-0", tmp_path / "machine-1"]
    for cwd in cwds:
        cwd.mkdir()
        shutil.copy(feedback_jsonl, cwd / "feedback.jsonl")
    out = "out" if private == "out" else str(tmp_path / "shared-out")
    data = "feedback.jsonl" if private == "data" else feedback_jsonl
    results = _two_machines(free_port(), demo_model_dir, data, out, cwds, env)
    assert [node.returncode != 0 for node, _, _ in results] == [True, True]
    stderr = results[0][2] + results[1][2]
    assert message in stderr, stderr[-3000:]
    assert "storage that every node mounts at the same path" in stderr
    out_dirs = [cwd / "out" for cwd in cwds] if private == "out" else [Path(out)]
    assert not any((directory / "metrics.jsonl").exists() for directory in out_dirs)  # no step was taken
    assert not any(path.name.startswith(".prospect-storage-check") for path in tmp_path.rglob("*"))
