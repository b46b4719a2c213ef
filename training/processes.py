"""Process-level helpers for training trees: is a pid alive, signal a run's process group, tail a log.

Plain OS calls, no Django: the runner uses them to supervise a run, the reaper to clean up after a
worker that died.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from training import process_tree

# After SIGTERM the training tree gets this long to exit before SIGKILL.
TERMINATE_GRACE_SECONDS = 10


def process_start_id(pid: int) -> str:
    """Who a pid is on this host: boot id, pid and start time ("" when there is no such process).

    A bare pid is not an identity: a restarted container's worker gets pid 7 again. The start
    time (clock ticks since boot, field 22 of /proc/<pid>/stat) differs for every process that
    ever held the pid, and the boot id for every boot of the machine.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""
    return f"{boot_id}:{pid}:{started}"


def worker_alive(pid: int, start_id: str = "") -> bool:
    """The worker process that recorded (pid, start_id) on this host is still running.

    Rows written before start ids were recorded (start_id "") fall back to the pid alone.
    """
    if not process_alive(pid):
        return False
    return not start_id or process_start_id(pid) == start_id


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # Field 3 of /proc/<pid>/stat is the state; "Z" is a zombie that only awaits its parent.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def kill_run_processes(pgid: int, run_id: int, sig: int = signal.SIGKILL, run_dir: str | None = None) -> None:
    """Signal the training process tree of a run whose monitor is gone (the reaper's case).

    The group id could in principle have been reused by an unrelated process since the worker
    died, so only processes carrying the run's environment marker are signalled (process_tree
    finds them): with run_dir, every such process in any session (torchrun's ranks); then the
    group's members marked with the run id alone, and their descendants (a tree started before
    runs carried PROSPECT_RUN_DIR). SIGKILL waits until none is left.
    """
    for marked_with_dir in ([run_dir] if run_dir else []) + [None]:
        if sig == signal.SIGKILL:
            process_tree.kill_run(run_id, marked_with_dir, pgid)
        else:
            process_tree.signal_run(run_id, marked_with_dir, pgid, sig)


def stop_group(proc: subprocess.Popen, run_id: int, run_dir: Path) -> int:
    """SIGTERM the whole tree, SIGKILL what is left after a grace period; returns the leader's exit code.

    The tree is the launcher's group and every process marked with the run (torchrun's ranks live
    in sessions of their own). The leader is not reaped before its group is signalled, so its pid
    (= the group id) cannot have been reused by another process.
    """
    process_tree.signal_run(run_id, run_dir, proc.pid, signal.SIGTERM)
    try:
        exit_code = proc.wait(timeout=TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        exit_code = None
    # Ranks may outlive their launcher: none of the run's processes is left running after this.
    process_tree.kill_run(run_id, run_dir, proc.pid if exit_code is None else None)
    return proc.wait() if exit_code is None else exit_code


def tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
