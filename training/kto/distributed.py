"""What a multi-process run needs beyond a single process, kept out of the training loop:

    world_size_problem(obtained, expected)  why this run must not train (N asked, M started), or None
    unsupported_backend_problem(accelerator) DeepSpeed is refused with the reason, or None
    lost_fsdp_problem(accelerator)           an FSDP config that accelerate quietly ran as DDP, or None
    unshared_out_problem(accelerator, out)   ranks (on other machines) that cannot see --out, or None
    is_sharded(accelerator)                  FSDP: parameters are split across ranks
    shard_frozen_copy(accelerator, module)   the live reference copy, sharded like the policy (FSDP2)
    full_state_dict(accelerator, wrapped)    every rank calls it; the inner model's full weights (rank 0)
    local_tensor(value)                      a DTensor (FSDP2's gradient norm) as a plain tensor
    all_finite(parameters, accelerator)      every weight finite, agreed by every process
    shut_down(accelerator)                   release the DDP/FSDP wrappers, then the process group

Why the teardown order matters: a gloo process group whose last reference is dropped by DDP's
reducer (after `destroy_process_group` unregistered it) is destroyed with the GIL held, and its
destructor joins worker threads that may need the GIL to free a tensor: the rank never exits.
Freed while the group is still registered, the wrappers drop only their own reference; the
group then goes last, through `destroy_process_group`, whose destructor releases the GIL.
"""

from __future__ import annotations

import gc
import os
import socket
from pathlib import Path

# Set by the runner (and usable by anyone launching the engine) when the caller knows how many
# processes it asked for; `--expected-world-size` overrides it.
EXPECTED_WORLD_SIZE_ENV = "PROSPECT_EXPECTED_WORLD_SIZE"

# Environment variables through which a launcher tells each process the real world size.
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

HOW_TO_LAUNCH_N = (
    "launch N processes with `accelerate launch --multi_gpu --num_processes N ...` (on a host without CUDA this "
    "starts N CPU processes over gloo; `--cpu` and `distributed_type: MULTI_CPU` start only one unless mpirun is "
    "used), or with a config from training/kto/accelerate/ and `--num_processes N`"
)


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1): for a launcher's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expected_world_size_from_env() -> int:
    """PROSPECT_EXPECTED_WORLD_SIZE as an int; 0 (no expectation) when unset or empty."""
    value = os.environ.get(EXPECTED_WORLD_SIZE_ENV, "").strip()
    if not value:
        return 0
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{EXPECTED_WORLD_SIZE_ENV}={value!r}: expected a whole number of processes") from None


def _launcher_asked_for_several_processes() -> bool:
    """accelerate's single-process launcher (`--cpu`, MULTI_CPU configs, one GPU without --multi_gpu) sets
    MASTER_ADDR only when it was asked for more than one process, yet starts one and tells it no world size."""
    launched_by_accelerate = "ACCELERATE_USE_CPU" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ
    told_world_size = any(name in os.environ for name in _WORLD_SIZE_VARIABLES)
    return launched_by_accelerate and "MASTER_ADDR" in os.environ and not told_world_size


def world_size_problem(obtained: int, expected: int) -> str | None:
    """Why a run with `obtained` processes must not train, or None. `expected` 0 means: not stated
    (then only accelerate's silent single-process fallback is detected)."""
    if expected < 0:
        return f"--expected-world-size must be 0 (not checked) or a number of processes, got {expected}"
    if expected and obtained != expected:
        return (
            f"{expected} training processes were asked for (--expected-world-size / {EXPECTED_WORLD_SIZE_ENV}) "
            f"but the launcher started {obtained}: refusing to train with a different global batch. "
            f"Fix: {HOW_TO_LAUNCH_N}."
        )
    if not expected and obtained == 1 and _launcher_asked_for_several_processes():
        return (
            "accelerate launch was asked for more than one process but started only this one (world size 1): "
            f"refusing to train with a different global batch than asked. Fix: {HOW_TO_LAUNCH_N}."
        )
    return None


def unsupported_backend_problem(accelerator) -> str | None:
    """DeepSpeed is not supported yet: it steps the optimizer inside `backward` and accumulates on its own,
    which the engine's explicit accumulation loop would turn into one update per microbatch."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return (
            "DeepSpeed is not supported by this engine yet (its engine steps inside backward and accumulates "
            "gradients itself); use the FSDP configs in training/kto/accelerate/ to shard a large model"
        )
    return None


def lost_fsdp_problem(accelerator) -> str | None:
    """accelerate turns an FSDP config into plain data parallelism on CPU processes without a word;
    every rank would then hold the whole model, which is not what the config promised."""
    from accelerate.utils import DistributedType

    asked_for_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    # One process has nothing to shard: it trains as it always did.
    if asked_for_fsdp and accelerator.num_processes > 1 and accelerator.distributed_type != DistributedType.FSDP:
        return (
            f"the accelerate config asks for FSDP but accelerate started {accelerator.distributed_type.value} "
            "(it does not run FSDP on CPU processes): refusing to train unsharded. Fix: run on GPUs, use "
            "training/kto/accelerate/ddp.yaml on CPU, or launch `-m training.kto.cpu_fsdp` to check FSDP on CPU"
        )
    return None


# How long a process may take to see a file the main process wrote before it is called blind.
STORAGE_CHECK_SECONDS_ENV = "PROSPECT_STORAGE_CHECK_SECONDS"


def unshared_out_problem(accelerator, out: Path) -> str | None:
    """Why this run's processes cannot share --out, or None. The main process creates it and writes
    the checkpoint directories that every other process then writes into and resumes from, so across
    machines it must be on storage that every node mounts at the same path. The main process writes
    one file there; every process looks for it. Every rank must call this (it is collective)."""
    if accelerator.num_processes == 1:
        return None
    import secrets
    import time

    import torch
    from accelerate.utils import broadcast_object_list

    outcome = [None]
    if accelerator.is_main_process:
        probe = out / f".prospect-storage-check-{secrets.token_hex(8)}"  # run-unique: no old file can answer
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe.touch()
            outcome = [(probe.name, None)]
        except OSError as error:
            outcome = [(probe.name, f"--out {out}: the main process cannot write there ({error})")]
    broadcast_object_list(outcome)  # every rank learns the name, or the main process's failure
    name, failure = outcome[0]
    probe = out / name
    if failure:
        return failure
    # A network file system may answer from a stale directory cache for a while (NFS: acdirmin,
    # up to about 30 s): listing the directory refreshes it, and a rank is blind only after waiting.
    deadline = time.monotonic() + float(os.environ.get(STORAGE_CHECK_SECONDS_ENV) or 30)
    while not _lists(out, probe.name) and time.monotonic() < deadline:
        time.sleep(0.5)
    sees = torch.tensor([float(_lists(out, probe.name))], device=accelerator.device)
    seen_by_rank = accelerator.gather(sees).tolist()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    blind = [rank for rank, seen in enumerate(seen_by_rank) if not seen]
    if not blind:
        return None
    return (
        f"process(es) {blind} of {accelerator.num_processes} cannot see what the main process writes in --out "
        f"{out}: checkpoints are written there by every process and resumed from by every process. Fix: put "
        "--out (and --data) on storage that every node mounts at the same path (NFS, a shared volume), "
        "given as the same absolute paths"
    )


def _lists(directory: Path, name: str) -> bool:
    try:
        return name in os.listdir(directory)
    except OSError:
        return False


SHARDED_STATE_DIR = "sharded-state"  # inside a checkpoint: accelerate.save_state's per-rank files (FSDP)


def is_sharded(accelerator) -> bool:
    """True when parameters are split across ranks (FSDP): a forward must go through the wrapped
    model and saving needs every rank."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def shard_frozen_copy(accelerator, module):
    """A frozen copy of the policy (the live reference) sharded the way accelerate sharded the policy,
    so that under FSDP no rank holds a whole second model. Unchanged when not sharded with FSDP2."""
    if not is_sharded(accelerator) or accelerator.state.fsdp_plugin.fsdp_version != 2:
        return module
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    module = fsdp2_prepare_model(accelerator, module)
    # FSDP keeps the root's parameters (embedding, final norm, LM head) gathered after a forward and
    # frees them in the backward; the frozen reference has no backward, so they would stay whole.
    module.set_reshard_after_forward(True)
    return module


def full_state_dict(accelerator, wrapped) -> dict | None:
    """The full weights of the model inside `wrapped` (a SequenceLogProbs), keyed as that inner
    model names them. Every rank must call this under FSDP (the shards are gathered); the result
    is complete on the main process only. None when not sharded: save_pretrained's own is right."""
    if not is_sharded(accelerator):
        return None
    state = accelerator.get_state_dict(wrapped, unwrap=True)
    prefix = "model."
    state = {name[len(prefix) :]: tensor for name, tensor in state.items() if name.startswith(prefix)}
    # Gathering copies each name's tensor separately, so tied weights (an LM head sharing the input
    # embedding) would be written twice; sharing the tensor again lets save_pretrained drop the tie.
    first_name_of: dict[int, str] = {}
    for name, parameter in accelerator.unwrap_model(wrapped).model.named_parameters(remove_duplicate=False):
        first = first_name_of.setdefault(id(parameter), name)
        if first != name and first in state and name in state:
            state[name] = state[first]
    return state


def all_finite(parameters, accelerator) -> bool:
    """Whether every parameter is finite, agreed by every process: under FSDP each process holds only
    its shards, and a rank that alone saw a NaN and stopped would leave the others waiting forever.
    Every rank must call this when more than one process runs."""
    import torch
    from torch.distributed.tensor import DTensor

    finite = all(
        bool(torch.isfinite(parameter.to_local() if isinstance(parameter, DTensor) else parameter).all())
        for parameter in parameters
    )
    if accelerator.num_processes == 1:
        return finite
    not_finite = torch.tensor([0.0 if finite else 1.0], device=accelerator.device)
    return float(accelerator.reduce(not_finite, reduction="sum")) == 0.0


def local_tensor(value):
    """A plain tensor for a value that FSDP2 may hand back as a DTensor (the clipped gradient norm is
    one, replicated on every rank): host-side checks and collectives need the ordinary tensor."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def live_wrappers() -> list[str]:
    """Type names of DDP/FSDP wrappers still alive in this process (each holds the process group)."""
    from torch.nn.parallel import DistributedDataParallel

    wrapper_types: tuple = (DistributedDataParallel,)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapper_types += (FullyShardedDataParallel,)
    except ImportError:  # pragma: no cover - every supported torch has FSDP
        pass
    return [type(obj).__name__ for obj in gc.get_objects() if isinstance(obj, wrapper_types)]


def shut_down(accelerator) -> None:
    """End a run's distributed state in an order that cannot deadlock (see the module docstring).

    The caller must already have dropped its own references to the prepared model and optimizer.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        accelerator.wait_for_everyone()  # no collective is in flight on any rank
    accelerator.free_memory()  # the accelerator's references to the wrapped model, optimizer, scheduler
    gc.collect()  # reference cycles through module hooks keep a wrapper alive otherwise
    accelerator.end_training()  # now the process group's last reference: destroyed without the GIL held
