"""Run under `accelerate launch --cpu --num_processes 2` (gloo) or plainly (one process).

Computes one KTO microbatch step on a fixed batch of 4 examples from the demo model and saves z0,
the loss and the parameter update (SGD, lr 1, so the update is minus the averaged gradient).
With 2 processes each takes 2 examples and builds its mismatched pairs locally; the single
process sees the combined batch with the same set of mismatched pairs.
"""

import sys

import torch

from training.kto import data as kto_data
from training.kto import distributed as kto_distributed
from training.kto.modeling import SequenceLogProbs, load_causal_lm, load_tokenizer
from training.kto.trainer import Reference, TrainConfig, _tensors, build_microbatch, microbatch_loss


def main(model_dir: str, data_path: str, out_path: str) -> None:
    from accelerate import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    tokenizer = load_tokenizer(model_dir)
    examples = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(data_path))[:4]
    world, rank = accelerator.num_processes, accelerator.process_index
    config = TrainConfig(
        model=model_dir, data=data_path, out="", beta=0.1, max_length=32, per_device_train_batch_size=4 // world
    )
    weights = {"desirable_weight": 1.3, "undesirable_weight": 0.8}
    policy = SequenceLogProbs(load_causal_lm(model_dir))
    # Move the policy away from the reference (identically on every process), so rewards and z0
    # are not trivially zero.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    reference = Reference(SequenceLogProbs(load_causal_lm(model_dir)).requires_grad_(False), disable_adapter=False)
    before = {name: parameter.detach().clone() for name, parameter in policy.named_parameters()}
    optimizer = torch.optim.SGD(policy.parameters(), lr=1.0)
    policy_ddp, optimizer = accelerator.prepare(policy, optimizer)

    local = list(range(rank * 2, rank * 2 + 2)) if world == 2 else [0, 1, 2, 3]
    batch = build_microbatch(examples, local, config, tokenizer.pad_token_id, reference_cache=None)
    if world == 1:
        # The combined batch with the union of the two processes' mismatched pairs: (0,1) (1,0) (2,3) (3,2).
        batch["mismatched"] = _tensors(examples, [(0, 1), (1, 0), (2, 3), (3, 2)], config, tokenizer.pad_token_id)
    loss, stats = microbatch_loss(policy_ddp, policy, reference, batch, config, weights, tokenizer.pad_token_id)
    accelerator.backward(loss)
    optimizer.step()
    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
    z0_per_process = accelerator.gather(stats["z0"].reshape(1)).tolist()
    if accelerator.is_main_process:
        update = {name: (parameter.detach() - before[name]) for name, parameter in policy.named_parameters()}
        torch.save(
            {
                "loss": mean_loss.item(),
                "z0": z0_per_process,
                "z0_raw": stats["z0_raw"].item(),
                "update": update,
                "world": world,
            },
            out_path,
        )
    # The DDP wrapper (and its reducer's threads) must go before the gloo group, as in the trainer:
    # destroyed the other way round at exit, a rank could abort ("terminate called without an active
    # exception") or hang.
    del policy_ddp, optimizer, loss, stats
    kto_distributed.shut_down(accelerator)


if __name__ == "__main__":
    main(*sys.argv[1:4])
