"""Where a training run's time goes, at three grains, none of which changes the numbers:

    PhaseClock      wall seconds per phase of the run (data, model, reference, setup, loop, save)
    SectionTimer    per step, the no-grad passes against the passes with gradient (no_grad_share)
    StepProfiler    torch.profiler over a few optimizer steps (--profile-steps N): the busiest
                    operators, kernel launches per step and, on CUDA, the share of the wall time the
                    GPU was busy — below 1 the run waits on the host (launch-bound), not on FLOPs
    HeldBytes       bytes a forward leaves alive for its backward (activation memory), counted by
                    storage: the same on every machine, so tests and benches can compare checkpoint
                    policies without a GPU

The first two run in every run (one sync per phase, none per step); the profiler only when asked,
because recording every operator slows the steps it watches.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# The CUDA runtime / driver calls that start one kernel each (recorded on the host side).
KERNEL_LAUNCH_CALLS = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"})
TOP_OPERATORS = 15


class PhaseClock:
    """Wall seconds spent in each phase of a run (data, model, reference, setup, loop, save): the
    profile that says where end-to-end time goes besides the loop. CUDA work is waited for at each
    boundary (one synchronisation per phase), so a phase is charged with the kernels it queued."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._since, 3)
        self._since = now


class SectionTimer:
    """Seconds spent in the sections of each training step (the no-grad passes, the passes with
    gradient) without a host sync per step: CUDA events on a GPU, read when the window is logged
    (a host sync happens there anyway); the wall clock on CPU, where work is not queued."""

    def __init__(self, device: torch.device) -> None:
        self.on_cuda = device.type == "cuda"
        self.pending: list[tuple[str, Any, Any]] = []
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def section(self, name: str):
        if self.on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self.pending.append((name, start, end))
        else:
            started = time.perf_counter()
            yield
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def take(self) -> dict[str, float]:
        """The seconds per section since the last take (waits for the recorded CUDA work)."""
        for name, start, end in self.pending:
            end.synchronize()
            self.seconds[name] = self.seconds.get(name, 0.0) + start.elapsed_time(end) / 1000
        taken, self.pending, self.seconds = self.seconds, [], {}
        return taken


def no_grad_share(sections: dict[str, float]) -> float | None:
    """The share of the steps' forward/backward time spent in the no-grad passes (the policy on
    mismatched pairs, a live reference): what the z0 and reference passes cost. None when not timed
    (offline PPO's per-microbatch path)."""
    total = sections.get("no_grad", 0.0) + sections.get("grad", 0.0)
    return round(sections.get("no_grad", 0.0) / total, 4) if total > 0 else None


class StepProfiler:
    """torch.profiler over `steps` optimizer steps, starting with the second step of the run (the
    first pays the allocator's warm-up and any compilation). Writes profile.json (the summary below)
    and profile.txt (torch's operator table) into `out_dir` on the main process; `summary` is then
    the same dict, for the run's summary.

    The summary: profiled_steps, wall_seconds (synchronised), kernel_launches_per_step,
    operator_calls_per_step (ATen calls the host dispatches) and the top operators by self time (device time on CUDA, host time on CPU); on CUDA also device_busy_seconds
    (the union of all kernel and copy intervals, so overlapping streams count once) and
    device_busy_share = device_busy_seconds / wall_seconds; then the caller's `context` (the trainer
    adds the attention implementation, which says whose kernels the attention rows are)."""

    def __init__(
        self,
        steps: int,
        first_step: int,
        total_steps: int,
        device: torch.device,
        out_dir: Path,
        write: bool,
        context: dict | None = None,
    ):
        self.context = context or {}
        self.first = first_step + 1 if total_steps - first_step > steps else first_step
        self.last = min(self.first + steps, total_steps) - 1
        self.enabled = steps > 0 and self.first <= self.last
        self.on_cuda = device.type == "cuda"
        self.out_dir, self.write = Path(out_dir), write
        self.summary: dict | None = None
        self._profile: torch.profiler.profile | None = None
        self._started = 0.0

    def before_step(self, step: int) -> None:
        if not self.enabled or step != self.first:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.on_cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        self._profile = torch.profiler.profile(activities=activities, record_shapes=False)
        self._profile.start()
        self._started = time.perf_counter()

    def after_step(self, step: int) -> None:
        if self._profile is None or step != self.last:
            return
        if self.on_cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._started
        self._profile.stop()
        # Averaging walks every recorded event: once, for both the summary and the table.
        averages = self._profile.key_averages()
        steps = self.last - self.first + 1
        self.summary = {**self._summarise(self._profile.events(), averages, wall, steps), **self.context}
        if self.write:
            (self.out_dir / "profile.json").write_text(json.dumps(self.summary, indent=1) + "\n")
            sort_by = "self_cuda_time_total" if self.on_cuda else "self_cpu_time_total"
            (self.out_dir / "profile.txt").write_text(averages.table(sort_by=sort_by, row_limit=40) + "\n")
        self._profile = None

    def close(self) -> None:
        """Stops a profile still recording (the run ended before its last watched step); no summary."""
        if self._profile is not None:
            self._profile.stop()
            self._profile = None

    def _summarise(self, events, averages, wall: float, steps: int) -> dict:
        launches = sum(1 for event in events if event.name in KERNEL_LAUNCH_CALLS)
        self_seconds = (
            (lambda average: average.self_device_time_total / 1e6)
            if self.on_cuda
            else (lambda average: average.self_cpu_time_total / 1e6)
        )
        ranked = sorted(averages, key=self_seconds, reverse=True)[:TOP_OPERATORS]
        summary: dict[str, Any] = {
            "profiled_steps": steps,
            "wall_seconds": round(wall, 4),
            "kernel_launches_per_step": round(launches / steps, 1),
            # ATen operator calls: what the host dispatches per step, on any device.
            "operator_calls_per_step": round(
                sum(average.count for average in averages if average.key.startswith("aten::")) / steps, 1
            ),
            "self_time_by": "device" if self.on_cuda else "host",
            "top_operators": [
                {"name": average.key, "calls": average.count, "self_seconds": round(self_seconds(average), 5)}
                for average in ranked
            ],
        }
        if self.on_cuda:
            busy = _union_seconds(
                (event.time_range.start, event.time_range.end)
                for event in events
                if event.device_type == torch.autograd.DeviceType.CUDA
            )
            summary["device_busy_seconds"] = round(busy, 4)
            summary["device_busy_share"] = round(busy / wall, 4) if wall > 0 else None
        return summary


def _union_seconds(intervals_us) -> float:
    """Total length of the union of [start, end) intervals given in microseconds, in seconds."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals_us):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total / 1e6


class HeldBytes(TorchDispatchMode):
    """Within ``with HeldBytes() as held:``, records every tensor storage an operator creates;
    ``held.alive()`` is how many bytes of them are still referenced (by autograd's saved tensors,
    a checkpoint's cache or the caller). Weak references only, so counting keeps nothing alive."""

    def __init__(self) -> None:
        super().__init__()
        self._storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type != "meta":
                storage = value.untyped_storage()
                reference = StorageWeakRef(storage)
                self._storages[reference.cdata] = (reference, storage.nbytes())
        return out

    def alive(self, exclude: tuple[torch.Tensor, ...] = ()) -> int:
        excluded = {StorageWeakRef(tensor.untyped_storage()).cdata for tensor in exclude}
        return sum(
            nbytes
            for key, (reference, nbytes) in self._storages.items()
            if key not in excluded and not reference.expired()
        )
