"""The engine under accelerate's FSDP on CPU processes (gloo): how its FSDP code is tested without a GPU.

    accelerate launch --config_file training/kto/accelerate/fsdp_full_shard.yaml --num_processes 2 \\
        -m training.kto.cpu_fsdp train --model M --data D --out O --bf16 no --expected-world-size 2

accelerate (1.15) turns an FSDP config into plain data parallelism (MULTI_CPU) when the processes
have no accelerator, and says nothing. torch's FSDP2 itself runs on CPU over gloo, so this entry
point only restores the distributed type the config asked for; everything after that is accelerate's
own FSDP2 path (`fully_shard`, the gathered full state dict, sharded `save_state` / `load_state`) and
the engine's, unchanged. Used by tests/kto/test_fsdp_cpu.py and `bench/scaleout_gpu.py --tiny`.
Not a way to train: on CPU, DDP is faster.
"""

from __future__ import annotations

import sys


def keep_fsdp_on_cpu() -> None:
    """Make AcceleratorState honour an FSDP plugin when the processes run on CPU."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original_init = AcceleratorState.__init__
    if getattr(original_init, "keeps_fsdp_on_cpu", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            # Accelerator reads the type through PartialState too (it copied MULTI_CPU there).
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    init.keeps_fsdp_on_cpu = True
    AcceleratorState.__init__ = init


if __name__ == "__main__":
    keep_fsdp_on_cpu()
    from .cli import main

    sys.exit(main())
