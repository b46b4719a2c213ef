"""Runs the engine for one TrainingRun in its own process tree and keeps the run row current.

execute_run(run_id) is what the gpu worker's run_training task calls:
1. claim: UPDATE ... SET status='running' WHERE id=? AND status='queued' — only one delivery of
   the task (redelivered, duplicated, or raced by two workers) gets past this line;
2. a new artifact directory DATA_DIR/runs/run-<id>-<UTC timestamp>/ (never reused) receives the
   snapshot's train and holdout splits (data/), the engine's output (out/) and its logs;
3. `accelerate launch ... -m training.kto train ...` (or `python -m training.kto train` with
   PROSPECT_TRAIN_LAUNCHER=python) starts in a new session; its environment marks every process
   of the tree with the run, so timeout and cancel stop all of them, including the ranks torchrun
   starts in sessions of their own (training.process_tree);
4. every PROSPECT_RUN_POLL_SECONDS the monitor copies new metrics.jsonl rows, the step, the
   progress and the log tail into the row and heartbeats; a status that is no longer 'running'
   (an admin cancelled, or the reaper declared the run dead) makes it kill the process group;
5. the exit code is recorded; success registers a candidate ModelVersion and runs the gate.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from feedback.services import export_kto
from training import process_tree
from training.gate import evaluate_candidate
from training.kto import defaults
from training.kto.distributed import free_port
from training.models import ModelVersion, TrainingRun
from training.processes import process_start_id, stop_group, tail
from training.registry import create_candidate_version

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
ERROR_TAIL_LINES = 20
# The run page charts at most this many points; longer series are thinned evenly.
MAX_STORED_METRIC_ROWS = 500


class RunSetupError(RuntimeError):
    """The run could not be prepared (snapshot export, base model); its message is shown on the run."""


# --- Claiming and finishing ----------------------------------------------------------------------
def claim_run(run_id: int) -> bool:
    """The status guard: move queued → running for exactly one caller; False for everyone else."""
    now = timezone.now()
    return bool(
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker_hostname=socket.gethostname(),
            worker_pid=os.getpid(),
            worker_start_id=process_start_id(os.getpid()),
        )
    )


def _finish(run_id: int, status: str, **fields) -> bool:
    """running → a final status; False when the run is no longer running (cancelled or reaped)."""
    return bool(
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.RUNNING).update(
            status=status, finished_at=timezone.now(), **fields
        )
    )


# --- Preparing a run -----------------------------------------------------------------------------
def new_run_dir(run: TrainingRun) -> Path:
    """A fresh directory for this run's artifacts; an existing one is never reused."""
    runs_dir = Path(settings.DATA_DIR) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")
    path = runs_dir / f"run-{run.pk}-{stamp}"
    path.mkdir(exist_ok=False)
    return path


def _export_splits(run: TrainingRun, data_dir: Path) -> tuple[Path, Path, int, int]:
    data_dir.mkdir()
    train_path, holdout_path = data_dir / "train.jsonl", data_dir / "holdout.jsonl"
    n_train = export_kto(run.snapshot, train_path, split="train")
    n_holdout = export_kto(run.snapshot, holdout_path, split="holdout")
    if n_train == 0:
        raise RunSetupError(f"snapshot {run.snapshot_id} has no training examples")
    return train_path, holdout_path, n_train, n_holdout


def _training_model_path(run: TrainingRun, run_dir: Path) -> str:
    """Full weights to start from: the base version, merged into its base model if an adapter."""
    base = run.base_version
    if base is None:
        if not run.config.get("base_model"):
            raise RunSetupError("the run has no base version and no base model")
        return run.config["base_model"]
    if not base.is_adapter:
        return base.artifact_path
    merged = run_dir / "base-merged"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.kto",
            "merge-adapter",
            "--base",
            base.base_model,
            "--adapter",
            base.artifact_path,
            "--out",
            str(merged),
        ],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=settings.PROSPECT_EVAL_TIMEOUT_SECONDS,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise RunSetupError(f"merging adapter {base.name} into {base.base_model} failed:\n{result.stderr[-2000:]}")
    return str(merged)


def expected_total_steps(config: dict, n_train: int) -> int:
    """Optimizer steps the engine will take: ⌈n / (batch·processes)⌉ / accumulation per epoch, capped."""
    per_step = max(1, int(config["per_device_train_batch_size"]) * max(1, settings.PROSPECT_NUM_PROCESSES))
    batches_per_epoch = math.ceil(n_train / per_step)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / max(1, int(config["gradient_accumulation_steps"]))))
    total = max(1, math.ceil(steps_per_epoch * float(config["num_train_epochs"])))
    if config.get("max_steps"):
        total = min(total, int(config["max_steps"]))
    return total


def build_train_command(run: TrainingRun, *, model: str, data: Path, out: Path) -> list[str]:
    """The engine's command line for this run (SPEC §3 option names)."""
    config = run.config
    engine_args = [
        "-m",
        "training.kto",
        "train",
        "--model",
        model,
        "--data",
        str(data),
        "--out",
        str(out),
        "--beta",
        repr(float(config["beta"])),
        "--learning-rate",
        repr(float(config["learning_rate"])),
        "--per-device-train-batch-size",
        str(int(config["per_device_train_batch_size"])),
        "--gradient-accumulation-steps",
        str(int(config["gradient_accumulation_steps"])),
        "--num-train-epochs",
        repr(float(config["num_train_epochs"])),
        "--max-length",
        str(int(config["max_length"])),
        # λ as chosen once when the run was created (training.runs.class_weights_for).
        "--desirable-weight",
        repr(float(run.desirable_weight)),
        "--undesirable-weight",
        repr(float(run.undesirable_weight)),
        "--seed",
        str(int(config["seed"])),
        "--loss",
        str(config["loss"]),
        # Flags the paper leaves open, explicit because the engine's own defaults are TRL's.
        "--warmup-ratio",
        repr(defaults.LOOP_WARMUP_RATIO),
        "--logging-steps",
        str(defaults.LOOP_LOGGING_STEPS),
        "--save-steps",
        str(defaults.LOOP_SAVE_STEPS),
        # A resource choice of the worker (its GPU's memory), not of the project's policy.
        *(
            ["--no-gradient-checkpointing"]
            if settings.PROSPECT_TRAIN_CHECKPOINTING == "off"
            else ["--gradient-checkpointing", "--checkpoint-policy", settings.PROSPECT_TRAIN_CHECKPOINTING]
        ),
        # The run page draws its own progress bar; a tqdm bar would only clutter the log tail.
        "--no-progress",
    ]
    if config.get("max_steps"):
        engine_args += ["--max-steps", str(int(config["max_steps"]))]
    if config.get("lora"):
        engine_args += ["--lora"]
    if settings.PROSPECT_TRAIN_LAUNCHER == "python":
        return [sys.executable, *engine_args]
    processes = settings.PROSPECT_NUM_PROCESSES
    # The engine refuses to train unless it got exactly this many processes.
    engine_args += ["--expected-world-size", str(processes)]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if settings.PROSPECT_ACCELERATE_CONFIG:
        launch += ["--config_file", settings.PROSPECT_ACCELERATE_CONFIG]
    else:
        # Plain single-machine defaults; spelled out so accelerate does not warn about guessing.
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            # --multi_gpu is what starts N processes through torchrun, on a GPU host (NCCL) and on a
            # CPU-only one (gloo) alike; without it accelerate starts one. A free port: not 29500,
            # which another job on this host may hold.
            launch += ["--multi_gpu", "--main_process_port", str(free_port())]
    launch += ["--num_processes", str(processes)]
    return [*launch, *engine_args]


# --- Monitoring ----------------------------------------------------------------------------------
@dataclass
class _MetricsTail:
    """Reads metrics.jsonl incrementally: only complete lines, from where the last read stopped."""

    path: Path
    offset: int = 0
    rows: list = field(default_factory=list)

    def read_new(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                self.rows.append(row)

    def stored(self) -> list:
        if len(self.rows) <= MAX_STORED_METRIC_ROWS:
            return list(self.rows)
        stride = math.ceil(len(self.rows) / MAX_STORED_METRIC_ROWS)
        thinned = self.rows[::stride]
        if thinned[-1] is not self.rows[-1]:
            thinned.append(self.rows[-1])
        return thinned


def _log_tail(run_dir: Path) -> str:
    stdout, stderr = tail(run_dir / "stdout.log", LOG_TAIL_LINES), tail(run_dir / "stderr.log", LOG_TAIL_LINES)
    return "\n".join(part for part in (stdout, stderr and f"--- stderr ---\n{stderr}") if part)


def _engine_total_steps(out_dir: Path) -> int | None:
    """The step count the engine planned (OUT/config.json "total_steps"), once it wrote it."""
    try:
        value = json.loads((out_dir / "config.json").read_text()).get("total_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def _progress_fields(metrics: _MetricsTail, run_dir: Path, total_steps: int) -> dict:
    step = int(metrics.rows[-1].get("step", len(metrics.rows))) if metrics.rows else 0
    return {
        "current_step": step,
        "total_steps": total_steps,
        "progress": min(1.0, step / total_steps) if total_steps else 0.0,
        "metrics": metrics.stored(),
        "log_tail": _log_tail(run_dir),
    }


@dataclass
class _Outcome:
    exit_code: int
    stopped_because: str = ""  # "", "timeout", or "no longer running" (cancelled / reaped)


def supervise(run: TrainingRun, command: list[str], run_dir: Path, out_dir: Path, total_steps: int) -> _Outcome:
    """Run `command` in its own session, mirroring its progress into the row until it ends."""
    time_limit = int(run.config.get("time_limit_seconds") or settings.PROSPECT_MAX_RUN_SECONDS)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **process_tree.run_environment(run.pk, run_dir))
    metrics = _MetricsTail(out_dir / "metrics.jsonl")
    with open(run_dir / "stdout.log", "wb") as stdout, open(run_dir / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    TrainingRun.objects.filter(pk=run.pk).update(process_group_id=proc.pid, heartbeat_at=timezone.now())
    try:
        return _monitor(run, proc, metrics, run_dir, out_dir, total_steps, time_limit)
    except BaseException:
        # The monitor itself failed (database gone, worker shutting down): never leave an
        # unsupervised training tree behind.
        stop_group(proc, run.pk, run_dir)
        raise


def _monitor(
    run: TrainingRun,
    proc: subprocess.Popen,
    metrics: _MetricsTail,
    run_dir: Path,
    out_dir: Path,
    total_steps: int,
    time_limit: int,
) -> _Outcome:
    deadline = time.monotonic() + time_limit
    while True:
        try:
            exit_code = proc.wait(timeout=settings.PROSPECT_RUN_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            exit_code = None
        metrics.read_new()
        # Our estimate until the engine states its plan (it knows about resumes and rounding).
        total_steps = _engine_total_steps(out_dir) or total_steps
        still_running = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
            heartbeat_at=timezone.now(), **_progress_fields(metrics, run_dir, total_steps)
        )
        if exit_code is not None:
            return _Outcome(exit_code)
        if not still_running:
            logger.info("run %s is no longer running (cancelled or reaped): stopping its processes", run.pk)
            return _Outcome(stop_group(proc, run.pk, run_dir), "no longer running")
        if time.monotonic() > deadline:
            logger.warning("run %s exceeded its time limit of %ss: stopping its processes", run.pk, time_limit)
            return _Outcome(stop_group(proc, run.pk, run_dir), "timeout")


# --- The whole run -------------------------------------------------------------------------------
def execute_run(run_id: int) -> ModelVersion | None:
    """Train the run if this caller wins the claim; returns the candidate version it produced."""
    if not claim_run(run_id):
        logger.info("run %s is not queued any more: this delivery does nothing", run_id)
        return None
    run = TrainingRun.objects.select_related("snapshot", "base_version").get(pk=run_id)
    try:
        run_dir = new_run_dir(run)
        TrainingRun.objects.filter(pk=run_id).update(artifact_dir=str(run_dir))
        train_path, _holdout_path, n_train, _n_holdout = _export_splits(run, run_dir / "data")
        model_path = _training_model_path(run, run_dir)
        out_dir = run_dir / "out"
        command = build_train_command(run, model=model_path, data=train_path, out=out_dir)
        (run_dir / "command.json").write_text(json.dumps(command))
        total_steps = expected_total_steps(run.config, n_train)
        outcome = supervise(run, command, run_dir, out_dir, total_steps)
    except Exception as exc:  # anything before or around the subprocess: the run fails, visibly
        logger.exception("run %s could not be trained", run_id)
        _finish(run_id, TrainingRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        return None

    log_tail = _log_tail(run_dir)
    if outcome.stopped_because == "no longer running":
        # Cancelled (or reaped): keep that status, just record how the process ended.
        TrainingRun.objects.filter(pk=run_id).update(exit_code=outcome.exit_code, log_tail=log_tail)
        return None
    if outcome.stopped_because == "timeout":
        _finish(
            run_id,
            TrainingRun.Status.FAILED,
            exit_code=outcome.exit_code,
            log_tail=log_tail,
            error=f"time limit of {run.config.get('time_limit_seconds')}s exceeded: training stopped",
        )
        return None
    if outcome.exit_code != 0:
        error_tail = tail(run_dir / "stderr.log", ERROR_TAIL_LINES) or tail(run_dir / "stdout.log", ERROR_TAIL_LINES)
        _finish(
            run_id,
            TrainingRun.Status.FAILED,
            exit_code=outcome.exit_code,
            log_tail=log_tail,
            error=f"training exited with code {outcome.exit_code}:\n{error_tail}",
        )
        return None
    final_dir = out_dir / "final"
    if not final_dir.is_dir():
        _finish(
            run_id,
            TrainingRun.Status.FAILED,
            exit_code=0,
            log_tail=log_tail,
            error=f"training exited with code 0 but wrote no {final_dir}",
        )
        return None

    with transaction.atomic():
        if not _finish(run_id, TrainingRun.Status.SUCCEEDED, exit_code=0, log_tail=log_tail, progress=1.0):
            return None
        run.refresh_from_db()
        version = create_candidate_version(
            run,
            artifact_path=str(final_dir),
            is_adapter=(final_dir / "adapter_config.json").exists(),
            trained_from=model_path,
        )
    evaluate_candidate(version)
    version.refresh_from_db()
    return version
