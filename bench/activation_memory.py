"""Activation memory per token and decoder layer under each checkpoint policy: none, "layer"
(TRL's gradient checkpointing) and "elementwise" (--checkpoint-policy elementwise), counted by
storage (training.kto.profiling.HeldBytes): the bytes a forward leaves alive for its backward.
The count does not depend on the machine, so a CPU run gives the figure a GPU run would hold:
bytes × layers × tokens per call with gradient (the token budget).

Each shape is built with one and with two of its decoder layers (the difference is one layer's
bytes) and a small vocabulary (the LM head is not part of the count), random weights, in the precision a GPU
run trains in: fp32 weights under bf16 autocast, or bf16 weights for the shapes built in bf16.
The per-token figure is the difference between two row lengths, so what does not grow with
tokens (autocast's bf16 copy of the weights) drops out.

    python bench/activation_memory.py                                   # 0.5B and 7B Qwen2.5 shapes (≈ 2 min)
    python bench/activation_memory.py --model-kinds bpe-llama --precision fp32
Ends with one JSON line: {"bench": "activation_memory", "<kind>": {"none": bytes, ...}, ...}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import ARCHITECTURES, MODEL_SHAPES, model_config  # noqa: E402

POLICIES = ("none", "layer", "elementwise")


def held_per_token(kind: str, policy: str, precision: str, lengths: tuple[int, int], layers: int) -> float:
    """Bytes per token left for backward by a ``layers``-layer model of this shape."""
    import torch
    import transformers

    from training.kto.modeling import enable_checkpointing
    from training.kto.profiling import HeldBytes

    config = model_config(kind)
    config.num_hidden_layers, config.vocab_size, config.use_cache = layers, 512, False
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = getattr(transformers, ARCHITECTURES[MODEL_SHAPES[kind].architecture][1])(config)
    if MODEL_SHAPES[kind].bf16:
        model = model.to(torch.bfloat16)
    if policy != "none":
        enable_checkpointing(model, policy)
    model.train()
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if precision == "bf16" and not MODEL_SHAPES[kind].bf16
        else contextlib.nullcontext()
    )
    held = []
    for length in lengths:
        input_ids = torch.randint(0, config.vocab_size, (1, length))
        with autocast, HeldBytes() as counter:
            hidden = model.model(input_ids=input_ids).last_hidden_state
        held.append(counter.alive(exclude=(hidden,)))
        del hidden
    return (held[1] - held[0]) / (lengths[1] - lengths[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kinds", default="qwen2.5-0.5b,qwen2.5-7b")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--lengths", default="64,128", help="the two row lengths whose difference is counted")
    parser.add_argument("--budget", type=int, default=16384, help="tokens per call, for the projected GiB")
    args = parser.parse_args()
    lengths = tuple(int(n) for n in args.lengths.split(","))
    report: dict = {"bench": "activation_memory", "precision": args.precision, "budget_tokens": args.budget}
    for kind in args.model_kinds.split(","):
        started = time.perf_counter()
        # One layer more adds one layer's bytes; the rest (embedding output, rotary tables, final
        # norm) is counted once per model.
        per_layer, outside = {}, {}
        for policy in POLICIES:
            one, two = (held_per_token(kind, policy, args.precision, lengths, n) for n in (1, 2))
            per_layer[policy], outside[policy] = two - one, 2 * one - two
        layers = MODEL_SHAPES[kind].num_hidden_layers
        report[kind] = {
            "bytes_per_token_per_layer": {policy: round(value) for policy, value in per_layer.items()},
            "bytes_per_token_outside_layers": {policy: round(value) for policy, value in outside.items()},
            "elementwise_vs_none": round(per_layer["elementwise"] / per_layer["none"], 3),
            "layer_vs_none": round(per_layer["layer"] / per_layer["none"], 3),
            # The decoder's activations for one call of --budget tokens, all layers (GiB).
            "projected_gib_per_call": {
                policy: round((per_layer[policy] * layers + outside[policy]) * args.budget / 2**30, 2)
                for policy in POLICIES
            },
        }
        print(f"{kind}: {report[kind]} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
