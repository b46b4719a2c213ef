"""Two-process engine training, TRIALS times in a row, under a watchdog: does every rank exit?

    python tests/kto/exit_harness.py MODEL DATA WORKDIR TRIALS TIMEOUT_S

Each trial forks two ranks from this process (torch, transformers and the engine are imported
once, here, so a trial costs about a second instead of two interpreter start-ups) and sets the
environment torchrun would set: RANK, WORLD_SIZE, MASTER_ADDR/PORT. Each rank runs the engine's
CLI (`train`, 2 steps) end to end, collects garbage (what interpreter exit does to what is left),
and exits. A rank that has not exited TIMEOUT_S after its trial began counts as hung and is killed.

Each rank also records which DDP/FSDP wrappers were still alive when the process group was
destroyed: a live wrapper there is the cause of the exit hang (its reducer then drops the group's
last reference with the GIL held), so a correct teardown shows none on every rank.

Prints one JSON line: {"trials", "clean_exits", "hung": [...], "failed": [...], "wrappers_alive_at_destroy": [...]}.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time
from pathlib import Path

from training.kto.distributed import free_port

WORLD_SIZE = 2


def _rank(rank: int, port: int, model: str, data: str, trial_dir: Path) -> int:
    import torch
    import torch.distributed as dist

    from training.kto import cli
    from training.kto.distributed import live_wrappers

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    for stream, name in ((1, "stdout"), (2, "stderr")):
        handle = os.open(trial_dir / f"{name}-{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, stream)
    torch.set_num_threads(1)
    seen_at_destroy: list = []
    destroy = dist.destroy_process_group

    def recording_destroy(*args, **kwargs):
        seen_at_destroy.extend(live_wrappers())
        return destroy(*args, **kwargs)

    dist.destroy_process_group = recording_destroy
    code = cli.main(
        [
            "train",
            "--model",
            model,
            "--data",
            data,
            "--out",
            str(trial_dir / "out"),
            "--max-steps",
            "2",
            "--per-device-train-batch-size",
            "2",
            "--gradient-accumulation-steps",
            "1",
            "--max-length",
            "32",
            "--learning-rate",
            "1e-4",
            "--no-progress",
            "--expected-world-size",
            str(WORLD_SIZE),
        ]
    )
    gc.collect()
    (trial_dir / f"probe-{rank}.json").write_text(
        json.dumps({"wrappers_alive_at_destroy": seen_at_destroy, "exit": code})
    )
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(model: str, data: str, workdir: str, trials: int, timeout: float) -> dict:
    # Everything heavy is imported before forking; nothing here has started a thread pool yet.
    import accelerate  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401

    import training.kto.cli  # noqa: F401
    import training.kto.trainer  # noqa: F401

    summary = {"trials": trials, "clean_exits": 0, "hung": [], "failed": [], "wrappers_alive_at_destroy": []}
    for trial in range(trials):
        trial_dir = Path(workdir) / f"trial-{trial}"
        trial_dir.mkdir(parents=True)
        port = free_port()
        ranks = {}
        for rank in range(WORLD_SIZE):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _rank(rank, port, model, data, trial_dir)
                finally:
                    os._exit(code)
            ranks[pid] = rank
        deadline = time.monotonic() + timeout
        exit_codes: dict[int, int] = {}
        while len(exit_codes) < len(ranks) and time.monotonic() < deadline:
            for pid in ranks.keys() - exit_codes.keys():
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    exit_codes[pid] = os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        for pid in ranks.keys() - exit_codes.keys():  # the watchdog: a rank that never exits
            summary["hung"].append({"trial": trial, "rank": ranks[pid]})
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for pid, code in exit_codes.items():
            if code != 0:
                stderr = (trial_dir / f"stderr-{ranks[pid]}.log").read_text(errors="replace")[-2000:]
                summary["failed"].append({"trial": trial, "rank": ranks[pid], "exit": code, "stderr": stderr})
        for rank in range(WORLD_SIZE):
            probe = trial_dir / f"probe-{rank}.json"
            alive = json.loads(probe.read_text())["wrappers_alive_at_destroy"] if probe.is_file() else []
            if alive:
                summary["wrappers_alive_at_destroy"].append({"trial": trial, "rank": rank, "wrappers": alive})
        if len(exit_codes) == len(ranks) and all(code == 0 for code in exit_codes.values()):
            summary["clean_exits"] += 1
    return summary


if __name__ == "__main__":
    model_dir, data_path, work, n_trials, timeout_s = sys.argv[1:6]
    print(json.dumps(main(model_dir, data_path, work, int(n_trials), float(timeout_s))), flush=True)
