"""Under FSDP each process holds only its shards of the weights, so one process alone can see a NaN.
`distributed.all_finite` must give every process the same answer, or the one that stops leaves the
others waiting in the next collective forever. Two gloo processes, weights sharded as FSDP2 does."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing

from training.kto.distributed import all_finite, free_port


@dataclass
class TwoProcesses:
    """What all_finite asks of an accelerate Accelerator, over a plain gloo process group."""

    num_processes: int = 2
    device: torch.device = torch.device("cpu")

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        reduced = tensor.clone()
        dist.all_reduce(reduced)
        return reduced


def _rank(rank: int, port: int, nan_on_rank: int | None, answers) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A bounded wait: a rank that dies turns the other's hang into an error.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (2,))
        full = torch.arange(8, dtype=torch.float32).reshape(4, 2)
        weight = distribute_tensor(full, mesh, [Shard(0)])  # rows 0-1 on rank 0, rows 2-3 on rank 1
        if rank == nan_on_rank:
            weight.to_local()[0, 0] = float("nan")
        answers[rank] = all_finite([weight, torch.ones(3)], TwoProcesses())
        # Both ranks done with every collective before either tears gloo down: a rank closing its
        # connections while the other still uses them makes gloo abort the process (seen once).
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("nan_on_rank", [None, 0, 1])
def test_every_process_gets_the_same_answer_when_one_shard_is_not_finite(nan_on_rank):
    answers = multiprocessing.Manager().dict()
    multiprocessing.spawn(_rank, args=(free_port(), nan_on_rank, answers), nprocs=2, join=True)
    expected = nan_on_rank is None
    assert dict(answers) == {0: expected, 1: expected}
