"""Finding and stopping every process of a training run, wherever it moved.

A run's processes are not one process group: `accelerate launch --multi_gpu` runs torchrun, which
starts each rank in a session of its own, so a signal to the launcher's group misses the ranks,
and once the launcher is dead they are adopted by init and cannot be found as its descendants.
What every one of them keeps is the environment the runner started the tree with, which names the
run (PROSPECT_RUN_ID) and its artifact directory (PROSPECT_RUN_DIR: unique across databases and
hosts' test sessions, so a reused run id never matches another run's processes).

    run_environment(run_id, run_dir)        the markers to add to the launcher's environment
    run_processes(run_id, run_dir, pgid)    live pids of the run: marked processes, plus (pgid given) the
                                            marked members of that group, plus the group's descendants
    signal_run(...), kill_run(...)          signal them all; kill_run SIGKILLs and waits until none is left
"""

from __future__ import annotations

import os
import signal
import time

import psutil

RUN_ID_VARIABLE = "PROSPECT_RUN_ID"
RUN_DIR_VARIABLE = "PROSPECT_RUN_DIR"
# SIGKILL takes effect at once; this only bounds the wait for the kernel to finish the job.
KILL_WAIT_SECONDS = 10.0


def run_environment(run_id: int, run_dir: str | os.PathLike) -> dict[str, str]:
    return {RUN_ID_VARIABLE: str(run_id), RUN_DIR_VARIABLE: str(run_dir)}


def _is_live(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _carries(process: psutil.Process, wanted: dict[str, str]) -> bool:
    try:
        environment = process.environ()
    except psutil.Error:  # gone, or not ours to read
        return False
    return all(environment.get(name) == value for name, value in wanted.items())


def run_processes(run_id: int, run_dir: str | os.PathLike | None = None, pgid: int | None = None) -> list[int]:
    """Live pids of the run's processes (never this process).

    With run_dir: every process carrying both markers, in any session. Without it (an old row),
    only the marked members of group `pgid` are trusted: a bare run id may belong to another
    database's run. With pgid, the group's members' descendants are added too (a process that
    cleared its environment is still a child of the tree while the launcher lives).
    """
    wanted = {RUN_ID_VARIABLE: str(run_id)}
    if run_dir is not None:
        wanted[RUN_DIR_VARIABLE] = str(run_dir)
    found: set[int] = set()
    group_members = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            in_group = pgid is not None and os.getpgid(process.pid) == pgid
        except OSError:
            continue
        if not _carries(process, wanted):
            continue
        if run_dir is not None or in_group:
            found.add(process.pid)
        if in_group:
            group_members.append(process)
    for member in group_members:
        try:
            found.update(child.pid for child in member.children(recursive=True))
        except psutil.Error:
            continue
    live = []
    for pid in sorted(found):
        try:
            if _is_live(psutil.Process(pid)):
                live.append(pid)
        except psutil.Error:
            continue
    return live


def signal_run(run_id: int, run_dir=None, pgid: int | None = None, sig: int = signal.SIGTERM) -> list[int]:
    """Send `sig` to the run's group (if given) and to every process of the run; returns the pids found."""
    pids = run_processes(run_id, run_dir, pgid)
    if pgid is not None and pids:
        # Only while a marked member proves the group is still the run's (a group id can be reused).
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return pids


def kill_run(run_id: int, run_dir=None, pgid: int | None = None, timeout: float = KILL_WAIT_SECONDS) -> list[int]:
    """SIGKILL every process of the run until none is left (or `timeout`); returns the pids still alive."""
    deadline = time.monotonic() + timeout
    while True:
        pids = signal_run(run_id, run_dir, pgid, signal.SIGKILL)
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)
