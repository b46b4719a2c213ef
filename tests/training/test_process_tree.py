"""Cancel, timeout and the reaper stop every rank of a multi-process run, not only the launcher
(issue 14): torchrun starts each rank in a session of its own, outside the launcher's group."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from feedback.models import DatasetSnapshot
from projects.selectors import default_project
from tests.helpers import free_port, wait_for
from training import process_tree, processes, runner, runs
from training.models import ModelVersion, TrainingRun
from training.processes import process_alive
from training.selectors import active_version

pytestmark = pytest.mark.slow

RANKS = 2


def _marked_processes(run: TrainingRun) -> list[int]:
    return process_tree.run_processes(run.pk, run.artifact_dir)


def test_reaper_kills_ranks_that_left_the_launchers_group(committed_db, tmp_path):
    """A dead worker's run: the reaper SIGKILLs the launcher's group and every rank, wherever it lives."""
    dead_worker = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_worker.wait()
    snapshot = DatasetSnapshot.objects.create(project=default_project(), path="/nonexistent", sha256="0" * 64)
    run_dir = tmp_path / "run-dir"
    run_dir.mkdir()
    run = TrainingRun.objects.create(
        project=default_project(),
        snapshot=snapshot,
        status=TrainingRun.Status.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        worker_hostname=socket.gethostname(),
        worker_pid=dead_worker.pid,
        artifact_dir=str(run_dir),
        desirable_weight=1.0,
        undesirable_weight=1.0,
    )
    # The tree exactly as the runner starts it: own session, marked environment, torchrun ranks.
    env = dict(os.environ, OMP_NUM_THREADS="1", **process_tree.run_environment(run.pk, run_dir))
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(RANKS),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(Path(__file__).with_name("rank_stand_in.py")),
            str(run_dir),
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        rank_files = [run_dir / f"rank-{rank}.pid" for rank in range(RANKS)]
        wait_for(lambda: all(path.is_file() and path.read_text() for path in rank_files), 120, "both ranks to start")
        ranks = [int(path.read_text()) for path in rank_files]
        assert all(os.getsid(pid) != os.getsid(launcher.pid) for pid in ranks)  # the premise: other sessions
        TrainingRun.objects.filter(pk=run.pk).update(process_group_id=launcher.pid)

        assert runs.reap_orphaned_runs() == [run.pk]

        assert launcher.wait(timeout=30) == -signal.SIGKILL
        wait_for(lambda: not any(process_alive(pid) for pid in ranks), 30, "every rank to be gone")
        run.refresh_from_db()
        assert _marked_processes(run) == []
    finally:
        process_tree.kill_run(run.pk, run_dir)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_cancel_with_no_grace_stops_every_rank_of_a_two_process_run(demo_loop, loop_redis, settings, monkeypatch):
    """The runner launches 2 engine processes (accelerate --multi_gpu: gloo on this CPU host); cancel
    with a zero grace period (SIGKILL at once, the case where SIGTERM is not honoured in time)
    leaves no process of the run alive and the run cancelled."""
    settings.PROSPECT_TRAIN_LAUNCHER = "accelerate"
    settings.PROSPECT_ACCELERATE_CONFIG = ""
    settings.PROSPECT_NUM_PROCESSES = RANKS
    settings.PROSPECT_RUN_POLL_SECONDS = 0.5
    monkeypatch.setattr(processes, "TERMINATE_GRACE_SECONDS", 0)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = runs.start_run(config={"max_steps": 10_000, "time_limit_seconds": 3600})
    observed: dict = {}

    def cancel_after_the_first_steps():
        try:

            def training() -> bool:
                current = TrainingRun.objects.get(pk=run.pk)
                return current.current_step >= 2 and bool(current.artifact_dir)

            wait_for(training, 300, "two training steps")
            current = TrainingRun.objects.get(pk=run.pk)
            observed["processes"] = _marked_processes(current)
            runs.cancel_run(current)
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_after_the_first_steps)
    canceller.start()
    # This test process plays the gpu worker (the task body is exactly this call).
    assert runner.execute_run(run.pk) is None
    canceller.join(timeout=60)

    run.refresh_from_db()
    command = json.loads((Path(run.artifact_dir) / "command.json").read_text())
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == str(RANKS)
    assert command[command.index("--expected-world-size") + 1] == str(RANKS)
    config = json.loads((Path(run.artifact_dir) / "out" / "config.json").read_text())
    assert config["world_size"] == RANKS
    # launcher + torchrun's 2 ranks (accelerate runs torchrun inside the launcher process)
    assert len(observed["processes"]) >= 1 + RANKS, observed
    assert run.status == TrainingRun.Status.CANCELLED and run.exit_code is not None and run.exit_code != 0
    assert _marked_processes(run) == []
    assert not any(process_alive(pid) for pid in observed["processes"])
    assert active_version() == demo_loop and not ModelVersion.objects.filter(created_by_run=run).exists()
