"""`--checkpoint-policy auto`: the least recompute whose memory fits the device.

Peak training memory is, to a good approximation, a fixed part (weights, a live reference copy,
gradients, AdamW's two moments) plus the activations that a forward call with gradient leaves for
its backward, which grow with the call's tokens. The activation part is *measured*, not estimated
from the architecture: one forward over real training sequences, on the real model (LoRA included),
under each policy, counting the bytes it leaves alive (profiling.HeldBytes counts storages, so the
figure is the same on every machine). The plan then picks, in order of recompute cost, off →
elementwise → layer, the first whose peak fits the limit at the run's largest call; when even layer
does not fit, it shrinks the token budget so that it does.

The limit is --memory-limit-gib, or by default what the device leaves this process: on CUDA the
free memory plus what the process already holds, on CPU the available memory plus the weights.
A tenth of it is kept back for what the count leaves out (allocator rounding and fragmentation,
cuBLAS workspaces, the no-grad passes' transient buffers).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass

import torch

from training.kto.defaults import CHECKPOINT_POLICIES, LOGITS_CHUNK_ELEMENTS
from training.kto.modeling import set_checkpointing
from training.kto.profiling import HeldBytes

# In order of recompute cost: no recompute, the element-wise ops only, whole layers.
CANDIDATES = ("off", *CHECKPOINT_POLICIES[::-1])
HEADROOM = 0.10  # share of the limit kept back for what the count leaves out
PROBE_TOKENS = 1024  # tokens of real sequences in the measuring call
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryPlan:
    policy: str  # "off" | "elementwise" | "layer"
    token_budget: int  # the run's token budget, smaller than asked only when nothing else fits
    fits: bool  # False: not even layer at one microbatch per call fits the limit (the run goes on)
    limit_bytes: int
    fixed_bytes: int
    call_tokens: int  # tokens of the largest call with gradient at the chosen budget
    activation_bytes_per_token: dict  # per candidate policy, measured
    activation_bytes_per_call: dict  # per candidate policy, measured: what does not grow with tokens

    def peak_bytes(self, policy: str | None = None) -> float:
        policy = policy or self.policy
        return peak_bytes(
            self.fixed_bytes, self.activation_bytes_per_token, self.activation_bytes_per_call, policy, self.call_tokens
        )

    def describe(self) -> str:
        others = ", ".join(
            f"{policy} {_size(self.peak_bytes(policy))}" for policy in CANDIDATES if policy != self.policy
        )
        verdict = "fits" if self.fits else "DOES NOT FIT"
        return (
            f"memory: checkpointing {self.policy} {verdict}: {_size(self.peak_bytes())} of "
            f"{_size(self.limit_bytes)} (less {HEADROOM:.0%} headroom) at {self.call_tokens} tokens per call "
            f"with gradient (peak with {others})"
        )

    def to_dict(self) -> dict:
        """For JSON: a policy whose measuring call ran out of memory has None for its counts."""
        finite = {
            key: (None if isinstance(value, float) and math.isinf(value) else value)
            for key, value in self.activation_bytes_per_token.items()
        }
        peak = self.peak_bytes()
        return dict(asdict(self), activation_bytes_per_token=finite, peak_bytes=None if math.isinf(peak) else peak)


def _size(n_bytes: float) -> str:
    if math.isinf(n_bytes):
        return "out of memory when measured"
    return f"{n_bytes / GIB:.1f} GiB" if n_bytes >= GIB else f"{n_bytes / 2**20:.0f} MiB"


def peak_bytes(fixed: int, per_token: dict, per_call: dict, policy: str, call_tokens: int) -> float:
    """Infinite for a policy whose measuring call ran out of memory."""
    peak = fixed + per_call[policy] + per_token[policy] * call_tokens
    return peak if math.isinf(peak) else int(peak)


def choose(
    per_token: dict,
    per_call: dict,
    fixed: int,
    limit_bytes: int,
    token_budget: int,
    largest_microbatch_tokens: int,
) -> MemoryPlan:
    """The first policy of CANDIDATES whose peak (fixed + activations) fits ``limit_bytes`` less the
    headroom, at the largest call with gradient: ``token_budget`` tokens when > 0 (a microbatch longer
    than the budget still goes whole), else one microbatch. Failing that, layer at the largest budget
    that fits; failing that too, layer at one microbatch per call, marked as not fitting."""
    usable = int(limit_bytes * (1 - HEADROOM))
    measured = dict(activation_bytes_per_token=per_token, activation_bytes_per_call=per_call)
    call_tokens = max(token_budget, largest_microbatch_tokens)
    for policy in CANDIDATES:
        if peak_bytes(fixed, per_token, per_call, policy, call_tokens) <= usable:
            return MemoryPlan(policy, token_budget, True, limit_bytes, fixed, call_tokens, **measured)
    room_tokens = int(max(usable - fixed - per_call["layer"], 0) // max(per_token["layer"], 1))
    fits = room_tokens >= largest_microbatch_tokens
    # A budget below one microbatch would still send each microbatch whole: say so with 0.
    budget = room_tokens if fits and token_budget > 0 else 0
    call_tokens = max(budget, largest_microbatch_tokens)
    return MemoryPlan("layer", budget, fits, limit_bytes, fixed, call_tokens, **measured)


def held_bytes(policy_module, inputs: dict, checkpoint: str, autocast) -> int:
    """Bytes that one forward with gradient of ``policy_module`` (a SequenceLogProbs) over ``inputs``
    leaves for its backward, with checkpointing ``checkpoint`` ("off" or a policy). The weights and
    inputs are not counted (views of them, such as a transposed weight, share their storage)."""
    set_checkpointing(policy_module.model, checkpoint)
    with torch.enable_grad(), autocast, HeldBytes() as counter:
        outputs = policy_module(**inputs)
    outputs = [value for value in (outputs if isinstance(outputs, tuple) else (outputs,)) if torch.is_tensor(value)]
    owned = [*policy_module.parameters(), *policy_module.buffers(), *(v for v in inputs.values() if torch.is_tensor(v))]
    held = counter.alive(exclude=(*outputs, *owned))
    del outputs  # frees the graph, and with it what was counted
    return held


def measure(
    policy_module, short: tuple[dict, int], long: tuple[dict, int], autocast_factory=contextlib.nullcontext
) -> tuple[dict, dict]:
    """Per candidate policy, activation bytes per token and per call, from two calls (``short`` and
    ``long``: inputs and their token counts): the difference grows with tokens, the rest does not
    (under autocast, the low-precision copies of the weights that the matmuls keep). In training mode
    as in the loop; random state is restored afterwards, so a run with dropout on draws the same masks
    as one that did not measure."""
    (short_inputs, short_tokens), (long_inputs, long_tokens) = short, long
    devices = [policy_module.model.device] if policy_module.model.device.type == "cuda" else []
    was_training = policy_module.training
    policy_module.train()  # transformers checkpoints only in training mode
    per_token, per_call = {}, {}
    try:
        with torch.random.fork_rng(devices=devices):
            for policy in CANDIDATES:
                try:
                    small = held_bytes(policy_module, short_inputs, policy, autocast_factory())
                    large = held_bytes(policy_module, long_inputs, policy, autocast_factory())
                except torch.OutOfMemoryError:
                    # The measuring call itself did not fit (a big model on a small card): neither
                    # will this policy. The next one keeps more of the device free.
                    small = large = None
                if large is None:
                    per_token[policy], per_call[policy] = math.inf, 0.0
                    if devices:
                        torch.cuda.empty_cache()
                elif long_tokens > short_tokens:
                    per_token[policy] = max(large - small, 0) / (long_tokens - short_tokens)
                    per_call[policy] = max(small - per_token[policy] * short_tokens, 0.0)
                else:
                    per_token[policy], per_call[policy] = large / long_tokens, 0.0
    finally:
        policy_module.train(was_training)
    return per_token, per_call


def weight_bytes(model) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in [*model.parameters(), *model.buffers()])


def fixed_bytes(model, live_reference_copy: bool, scored_positions: int) -> int:
    """Weights (and a frozen copy of them for a live reference), plus for every trainable
    parameter its gradient and AdamW's two moments, all in the parameter's dtype; plus one chunk
    of fp32 logits and their log-softmax (at most LOGITS_CHUNK_ELEMENTS, fewer for a short call)."""
    weights = weight_bytes(model)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    vocabulary = model.get_output_embeddings().weight.shape[0]
    head_chunk = min(scored_positions * vocabulary, LOGITS_CHUNK_ELEMENTS) * 4 * 2
    return weights * (2 if live_reference_copy else 1) + 3 * trainable + head_chunk


def device_limit_bytes(device: torch.device, limit_gib: float, resident_bytes: int) -> int:
    """--memory-limit-gib when given (> 0); else what the device leaves this process."""
    if limit_gib > 0:
        return int(limit_gib * GIB)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_allocated(device)
    import psutil

    return psutil.virtual_memory().available + resident_bytes
