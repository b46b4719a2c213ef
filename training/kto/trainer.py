"""The training loop: read top to bottom.

    train(config)
      1. check the data and options (before anything is written, so a failure changes nothing)
      2. load tokenizer and policy (dropout off); LoRA wraps it; pick the reference
         (precomputed / copy / adapter-off)
      3. plan every optimizer step's microbatches up front (seeded, reshuffled each epoch)
      4. precompute reference log-probs once, cached next to the data: one entry per exact token
         sequence, in a file keyed by the reference's identity (model, adapter, precision, code)
      5. AdamW + linear warmup/decay; resume from the newest checkpoint if asked (same world size,
         precision, data and model, or refused)
      6. loop: per microbatch, no-grad work first (as few forwards as possible), then the
         policy forward with grad and backward; a step with a non-finite loss or gradient norm is
         skipped (K in a row abort); clip, step, log, checkpoint
      7. write final/ atomically (never non-finite weights)

Launch:
    python -m training.kto train --model DIR --data FILE.jsonl --out NEW_DIR [options]
    accelerate launch --num_processes N -m training.kto train ...       # data parallel on N GPUs
    accelerate launch --multi_gpu --num_processes 2 -m training.kto train ...   # 2 gloo CPU workers

Runs on one process, or on N under `accelerate launch` (each process takes its slice of every
global microbatch; z0 is all-reduced inside loss.reference_point).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import struct
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import data as kto_data
from . import defaults
from . import distributed as kto_distributed
from . import loss as kto_loss
from . import memory_plan as kto_memory_plan
from .balancing import balance_weights
from .defaults import CHECKPOINT_POLICIES
from .modeling import (
    SequenceLogProbs,
    is_peft_dir,
    load_causal_lm,
    load_tokenizer,
    model_fingerprint,
    set_checkpointing,
)
from .profiling import PhaseClock, SectionTimer, StepProfiler, no_grad_share


class TrainingError(RuntimeError):
    """A problem with the options or the environment, reported as one clear message."""


class NonFiniteError(TrainingError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


@dataclass
class TrainConfig:
    """Options named as TRL's KTOConfig fields where one exists, with TRL's defaults (defaults.py).
    The training policy passes the paper's values explicitly."""

    model: str
    data: str
    out: str
    loss: str = "kto"  # a name in loss.VARIANTS
    beta: float = defaults.TRL_BETA
    learning_rate: float = defaults.TRL_LEARNING_RATE
    per_device_train_batch_size: int = defaults.TRL_PER_DEVICE_TRAIN_BATCH_SIZE
    gradient_accumulation_steps: int = defaults.TRL_GRADIENT_ACCUMULATION_STEPS
    num_train_epochs: float = defaults.TRL_NUM_TRAIN_EPOCHS
    max_steps: int = defaults.TRL_MAX_STEPS  # > 0 stops after this many optimizer steps
    max_length: int = defaults.TRL_MAX_LENGTH
    max_prompt_length: int | None = None  # keeps the prompt's last tokens (data.tokenize_example)
    desirable_weight: float | str = defaults.TRL_DESIRABLE_WEIGHT  # a number or "auto" (balance_weights)
    undesirable_weight: float | str = defaults.TRL_UNDESIRABLE_WEIGHT
    target_ratio: float = defaults.TARGET_RATIO
    balance_mode: str = "auto"  # auto | downside_first (used when weights are "auto")
    warmup_ratio: float = defaults.TRL_WARMUP_RATIO
    weight_decay: float = defaults.TRL_WEIGHT_DECAY
    max_grad_norm: float = defaults.TRL_MAX_GRAD_NORM
    seed: int = defaults.TRL_SEED
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    reference: str = "precompute"  # precompute | copy (full FT: frozen copy; LoRA: adapter disabled)
    z0_zero: bool = False  # SPEC: z0 = 0 after SFT on the same data, saves the mismatched pass
    keep_dropout: bool = not defaults.TRL_DISABLE_DROPOUT  # TRL's disable_dropout, inverted
    gradient_checkpointing: bool = defaults.TRL_GRADIENT_CHECKPOINTING
    # What a checkpointed layer recomputes in backward: "layer" (all of it, TRL's) or "elementwise"
    # (matmul and attention outputs kept; defaults.CHECKPOINT_POLICIES). Same numbers either way.
    # "auto": the least recompute (none first) whose measured peak fits memory_limit_gib (memory_plan.py).
    checkpoint_policy: str = "layer"
    memory_limit_gib: float = 0.0  # for "auto": 0 = what the device leaves this process
    bf16: str = "auto"  # auto (on when CUDA is available) | yes | no
    logging_steps: int = defaults.TRL_LOGGING_STEPS
    save_steps: int = defaults.TRL_SAVE_STEPS  # 0: no intermediate checkpoints
    max_nonfinite_steps: int = defaults.MAX_NONFINITE_STEPS
    resume: bool = False
    progress: bool = True  # the tqdm bar on stderr
    expected_world_size: int = 0  # > 0: refuse to train unless the launcher started exactly this many processes
    # TRL KTOTrainer's data handling, so a run matches TRL's step for step: file order (no shuffle,
    # no length buckets, last partial microbatch kept), mismatched pairs (x_i, y_(i-1) mod m), its
    # truncation (keep the start; drop rows whose prompt fills max_length), warmup and fused AdamW.
    trl_compat: bool = False
    # Speed (none of these changes the numbers beyond float rounding; tests/kto/test_speed_levers.py):
    # tokens per forward call; the logical microbatches (z0's groups, the loss's means) stay as
    # planned, a call just holds several of them. 0: one call per microbatch; -1: auto (defaults.py).
    token_budget: int = defaults.AUTO
    packing: bool = True  # padding-free rows (data.pack) instead of right-padded ones
    # In the reference passes (no gradient), a prompt's matched and mismatched sequences share its
    # states: the prompt is computed once (data.prefix_trees). Packed rows only.
    prefix_sharing: bool = True
    # In the loop, a mismatched sequence whose prompt is long against its completion is scored in
    # the call with gradient as a branch of its matched sequence (detached), so its prompt is not
    # computed again (mismatched_merge_ratio). Shared prompts on one process only.
    mismatched_in_grad_call: bool = True
    logits_chunk_size: int = defaults.AUTO  # positions per LM-head chunk (0: whole head at once; -1: auto)
    optimizer_impl: str = "fused"  # AdamW implementation: fused | foreach | for-loop (same maths)
    # torch.compile each decoder layer with this backend ("": eager). Regional: one graph serves
    # every layer, so compiling costs one layer's time, not the model's. Same maths; float rounding
    # may differ where inductor fuses kernels.
    compile_backend: str = ""
    # > 0: torch.profiler over this many optimizer steps from the second; writes profile.json and
    # profile.txt into out and adds "profile" to the summary (profiling.StepProfiler). Slows those steps.
    profile_steps: int = 0

    # Fields that change the result: a resumed run must match the original on these.
    RESULT_FIELDS = (
        "model",
        "data",
        "loss",
        "beta",
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_train_epochs",
        "max_steps",
        "max_length",
        "max_prompt_length",
        "desirable_weight",
        "undesirable_weight",
        "target_ratio",
        "balance_mode",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "seed",
        "lora",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "reference",
        "z0_zero",
        "keep_dropout",
        "trl_compat",
    )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def variant(self) -> kto_loss.LossVariant:
        return kto_loss.VARIANTS[self.loss]

    @property
    def uses_mismatched(self) -> bool:
        return self.variant.needs_mismatched and not self.z0_zero


def _parse_weight(value: float | str, name: str) -> float | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"--{name} must be a number or 'auto', got {value!r}") from None
    if not weight > 0 or not math.isfinite(weight):
        raise TrainingError(f"--{name} must be a positive number, got {weight}")
    return weight


def resolve_class_weights(config: TrainConfig, n_desirable: int, n_undesirable: int) -> dict:
    """λ_D, λ_U from the options: explicit numbers win; 'auto' applies the SPEC §1 rule."""
    desirable = _parse_weight(config.desirable_weight, "desirable-weight")
    undesirable = _parse_weight(config.undesirable_weight, "undesirable-weight")
    if desirable is not None and undesirable is not None:
        weights = balance_weights(n_desirable, n_undesirable, manual=(desirable, undesirable))
        return weights.to_dict()
    try:
        weights = balance_weights(
            n_desirable, n_undesirable, target_ratio=config.target_ratio, mode=config.balance_mode
        )
    except ValueError as error:
        if n_desirable and n_undesirable:
            raise TrainingError(str(error)) from None
        # A single-class dataset (e.g. KTO on desirable data only, paper Table 4): nothing to balance.
        weights = balance_weights(n_desirable, n_undesirable, manual=(1.0, 1.0))
    result = weights.to_dict()
    # One explicit weight with the other on auto: the explicit one overrides its side.
    if desirable is not None:
        result.update(desirable_weight=desirable, rule=result["rule"] + "; λ_D given explicitly")
    if undesirable is not None:
        result.update(undesirable_weight=undesirable, rule=result["rule"] + "; λ_U given explicitly")
    return result


# ----------------------------------------------------------------------------------------------
# Microbatches: built on the host, moved to the device just before use.


def _tensors(
    examples: list[kto_data.TokenizedExample], keys: list[tuple[int, int]], config: TrainConfig, pad_token_id: int
) -> dict[str, Any]:
    """Collate sequences named by (prompt example, completion example) keys."""
    batch = kto_data.collate(
        [(examples[i].prompt_ids, examples[j].completion_ids) for i, j in keys],
        config.max_length,
        pad_token_id,
        truncation="keep_start" if config.trl_compat else "keep_completion",
    )
    if bool(batch["attention_mask"].all()):
        batch["attention_mask"] = None  # no padding: decided here on the host, no device sync later
    return batch


def microbatch_keys(
    local_indices: list[int], config: TrainConfig
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The (prompt, completion) example indices of one microbatch: matched (x_i, y_i) and, for the
    losses with a reference point, mismatched (x_i, y_{(i+1) mod m}). Used both to build the
    microbatch and to plan which reference log-probs to precompute, so the two always agree."""
    if config.variant.paired:
        # Examples 2k / 2k+1 are pair k's chosen / rejected completions (see prepare_examples).
        return [(2 * k, 2 * k) for k in local_indices] + [(2 * k + 1, 2 * k + 1) for k in local_indices], []
    matched = [(i, i) for i in local_indices]
    if config.uses_mismatched:
        partners = (
            kto_data.trl_mismatched_partners(len(local_indices))
            if config.trl_compat
            else kto_data.mismatched_partners(len(local_indices))
        )
        return matched, [(local_indices[i], local_indices[j]) for i, j in enumerate(partners)]
    return matched, []


def sequence_keys(batch: dict[str, Any]) -> list[str]:
    """One key per row of a collated batch: a hash of exactly the token ids the model reads and
    of which of them are scored (after truncation). Equal keys mean equal reference log-probs
    for the same reference, whatever the loss, file row or microbatch the sequence came from."""
    input_ids, completion_mask = batch["input_ids"], batch["completion_mask"]
    attention_mask = batch.get("attention_mask")
    keys = []
    for row in range(input_ids.shape[0]):
        length = int(attention_mask[row].sum()) if attention_mask is not None else input_ids.shape[1]
        digest = hashlib.blake2b(digest_size=16)
        digest.update(input_ids[row, :length].numpy().astype("<i8").tobytes())
        digest.update(completion_mask[row, :length].numpy().tobytes())
        keys.append(digest.hexdigest())
    return keys


def build_microbatch(
    examples, local_indices: list[int], config: TrainConfig, pad_token_id: int, reference_cache: dict | None
) -> dict[str, Any]:
    """Everything one microbatch needs. For KTO: the matched sequences (x_i, y_i), the mismatched
    ones (x_i, y_{(i+1) mod m}) built from this very microbatch, and cached reference log-probs."""
    matched_keys, mismatched_keys = microbatch_keys(local_indices, config)
    batch = {
        "matched": _tensors(examples, matched_keys, config, pad_token_id),
        "mismatched": _tensors(examples, mismatched_keys, config, pad_token_id) if mismatched_keys else None,
        "is_desirable": torch.tensor([examples[i].label for i, _ in matched_keys]),
        "n_examples": len(matched_keys),
        "n_tokens": sum(
            min(len(examples[i].prompt_ids) + len(examples[j].completion_ids), config.max_length)
            for i, j in matched_keys
        ),
    }
    if reference_cache is not None:
        batch["reference_matched"] = torch.tensor([reference_cache[key] for key in sequence_keys(batch["matched"])])
        if mismatched_keys:
            batch["reference_mismatched"] = torch.tensor(
                [reference_cache[key] for key in sequence_keys(batch["mismatched"])]
            )
    return batch


def _to_device(tensors: dict | None, device) -> dict | None:
    if tensors is None:
        return None
    return {
        key: (value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value)
        for key, value in tensors.items()
    }


def _concat_sequences(first: dict, second: dict, pad_token_id: int) -> dict:
    """Stack two collated batches into one (padding to the wider), for a single forward call."""
    width = max(first["input_ids"].shape[1], second["input_ids"].shape[1])

    def pad(tensor, value):
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    def mask_of(batch):
        if batch["attention_mask"] is not None:
            return batch["attention_mask"]
        return torch.ones_like(batch["input_ids"])

    return {
        "input_ids": torch.cat([pad(first["input_ids"], pad_token_id), pad(second["input_ids"], pad_token_id)]),
        "attention_mask": torch.cat([pad(mask_of(first), 0), pad(mask_of(second), 0)]),
        "completion_mask": torch.cat([pad(first["completion_mask"], False), pad(second["completion_mask"], False)]),
    }


# ----------------------------------------------------------------------------------------------
# The reference model


class Reference:
    """log π_ref of sequences, without gradient. One of:
    - a frozen copy of the initial policy (full fine-tuning, --reference copy);
    - the policy itself with its LoRA adapter disabled (LoRA: no second copy in memory);
    - nothing: log-probs were precomputed (--reference precompute) or the loss needs none.
    """

    def __init__(self, module: SequenceLogProbs | None, disable_adapter: bool):
        self.module = module
        self.disable_adapter = disable_adapter

    def _context(self):
        return self.module.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext()

    @torch.no_grad()
    def logps(self, batch: dict) -> torch.Tensor:
        with self._context():
            return self.module(**batch)[0]

    @torch.no_grad()
    def token_logps(self, batch: dict) -> torch.Tensor:
        with self._context():
            return self.module(**batch, per_token=True)[2]


# The engine code that turns a token sequence into a log-prob: part of the cache's identity.
_LOGPROB_CODE = (Path(__file__).with_name("modeling.py"),)


def reference_identity(config: TrainConfig, use_bf16: bool) -> dict:
    """Everything that decides the reference log-prob of a given token sequence. The cache file is
    named by its hash, so a different model, adapter state, precision or engine version never
    reads another's values (entries themselves are keyed by their exact token ids)."""
    return {
        "model_fingerprint": model_fingerprint(config.model),
        # The trainer always starts from full weights: the reference is the model as loaded, and
        # with LoRA it is the same model with the (fresh) adapter disabled.
        "adapter": "disabled" if config.lora else "none",
        "precision": "bf16-autocast" if use_bf16 else "fp32",
        "tokenization_version": kto_data.TOKENIZATION_VERSION,
        "logprob_code": hashlib.sha256(b"".join(path.read_bytes() for path in _LOGPROB_CODE)).hexdigest(),
        "torch": str(torch.__version__),  # a plain str: TorchVersion would not load with weights_only
    }


def reference_cache_dir(data_path: str) -> Path:
    data_path = Path(data_path)
    return data_path.parent / f"{data_path.name}.prospect-ref"


def reference_cache_path(data_path: str, identity: dict) -> Path:
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return reference_cache_dir(data_path) / f"{name}.pt"


def precompute_reference_logps(
    reference: Reference,
    examples,
    keys: list[tuple[int, int]],
    config: TrainConfig,
    pad_token_id: int,
    device,
    autocast,
    token_budget: int,
    packing: bool,
    share_prefixes: bool = False,
) -> dict:
    """log π_ref for (prompt example, completion example) index keys, in length-sorted calls of up
    to ``token_budget`` tokens (packed when ``packing``, prompts shared when ``share_prefixes``);
    returned by sequence key (see joined_key)."""
    joined = joined_sequences(examples, keys, config)
    if token_budget > 0:
        chunks = [joined]
    else:  # no budget: length-sorted calls of 4 microbatches' worth of sequences
        if packing and share_prefixes:
            # A prompt's sequences side by side, so that a call holds them together.
            def prompt_of(sequence) -> tuple[int, ...]:
                return tuple(sequence[0][: sequence[1]])

            longest: dict[tuple, int] = {}
            for sequence in joined:
                longest[prompt_of(sequence)] = max(longest.get(prompt_of(sequence), 0), len(sequence[0]))
            joined.sort(key=lambda sequence: (longest[prompt_of(sequence)], prompt_of(sequence)))
        else:
            joined.sort(key=lambda sequence: len(sequence[0]))
        size = 4 * config.per_device_train_batch_size
        chunks = [joined[start : start + size] for start in range(0, len(joined), size)]
    logps = []
    with autocast():
        for chunk in chunks:
            logps += score_no_grad(
                reference.module, chunk, token_budget, pad_token_id, packing, device, reference._context, share_prefixes
            ).tolist()
    joined = [sequence for chunk in chunks for sequence in chunk]
    return {joined_key(*sequence): value for sequence, value in zip(joined, logps)}


def load_or_precompute_reference(
    reference,
    examples,
    index_keys: set[tuple[int, int]],
    config,
    pad_token_id,
    accelerator,
    token_budget: int,
    packing: bool,
    identity: dict,
    share_prefixes: bool = False,
) -> tuple[dict, dict]:
    """Reference log-probs from the cache next to the data, computing (and adding) what is missing.
    The main process computes and writes; the others read after it."""
    path = reference_cache_path(config.data, identity)
    info = {"path": str(path), "hits": 0, "computed": 0}
    with accelerator.main_process_first():
        cached: dict[str, float] = {}
        if path.is_file():
            try:
                stored = load_plain(path)
            except TrainingError as error:  # not ours, or tampered with: recompute and replace it
                print(f"warning: {error}; recomputing the reference log-probs", file=sys.stderr)
                stored = {}
            if stored.get("identity") == identity:
                cached = stored["logps"]
        # Sequence keys of every planned (prompt, completion) pair; one representative per key.
        wanted: dict[str, tuple[int, int]] = {}
        for index_key in sorted(index_keys):
            key = joined_key(*joined_sequences(examples, [index_key], config)[0])
            wanted.setdefault(key, index_key)
        missing = [index_key for key, index_key in wanted.items() if key not in cached]
        info["hits"] = len(wanted) - len(missing)
        if missing and accelerator.is_main_process:
            cached.update(
                precompute_reference_logps(
                    reference,
                    examples,
                    missing,
                    config,
                    pad_token_id,
                    accelerator.device,
                    accelerator.autocast,
                    token_budget,
                    packing,
                    share_prefixes,
                )
            )
            info["computed"] = len(missing)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp-{os.getpid()}")
            torch.save({"identity": identity, "logps": cached}, temporary)
            os.replace(temporary, path)  # atomic: a reader never sees half a cache
    if accelerator.num_processes > 1:
        # Every process reads what the main process wrote: on machines that do not share the data's
        # directory the others would find no cache (and fail later, obscurely). Collective.
        lacking = sum(1 for key in wanted if key not in cached)
        lacking_anywhere = accelerator.reduce(torch.tensor([float(lacking)], device=accelerator.device), "sum")
        if float(lacking_anywhere) > 0:
            raise TrainingError(
                f"{path}: the reference log-probs written by the main process are not visible to every process. "
                "Fix: put --data on storage that every node mounts at the same path, given as the same absolute "
                "path (the cache lives next to it), or use --reference copy"
            )
    return cached, info


# ----------------------------------------------------------------------------------------------
# One microbatch: loss and statistics


def microbatch_loss(
    policy,
    policy_unwrapped: SequenceLogProbs,
    reference: Reference | None,
    batch: dict,
    config: TrainConfig,
    class_weights: dict,
    pad_token_id: int,
) -> tuple[torch.Tensor, dict]:
    """The loss of one microbatch (already on the device) and its detached statistics.

    No-grad work comes first and in as few forward calls as possible: the reference scores matched
    and mismatched sequences in one call; the policy scores the mismatched ones in another (with
    precomputed reference log-probs, that is the only no-grad call). Then one forward with grad.
    """
    variant = config.variant
    matched, mismatched = batch["matched"], batch["mismatched"]
    n_matched = matched["input_ids"].shape[0]
    zero = torch.zeros((), device=matched["input_ids"].device)
    is_desirable = batch["is_desirable"]

    if variant.token_level:  # offline PPO: per-token ratios against the live reference
        reference_tokens = reference.token_logps(matched)
        policy_logps, token_counts, policy_tokens = policy(**matched, per_token=True)
        advantages = torch.where(is_desirable, 1.0, -1.0).to(policy_tokens).repeat_interleave(token_counts)
        loss = kto_loss.ppo_offline_loss(policy_tokens, reference_tokens, advantages, defaults.PPO_CLIP_EPSILON)
        rewards = torch.zeros_like(policy_logps).index_add(
            0,
            torch.arange(n_matched, device=policy_logps.device).repeat_interleave(token_counts),
            (policy_tokens - reference_tokens).detach().float(),
        )
        stats = kto_loss.reward_statistics(rewards, is_desirable, zero)
        stats.update(z0=zero, z0_raw=zero)
        return loss, stats

    reference_matched = batch.get("reference_matched")
    reference_mismatched = batch.get("reference_mismatched")
    with torch.no_grad():
        if variant.needs_reference and reference_matched is None:
            sequences = matched if mismatched is None else _concat_sequences(matched, mismatched, pad_token_id)
            reference_logps = reference.logps(sequences)
            reference_matched = reference_logps[:n_matched]
            reference_mismatched = reference_logps[n_matched:] if mismatched is not None else None
        mismatched_policy = policy_unwrapped(**mismatched)[0] if mismatched is not None else None

    policy_logps, token_counts = policy(**matched)
    z0, z0_raw = z0_of(config, mismatched_policy, reference_mismatched, zero)
    return loss_from_logps(
        policy_logps, token_counts, is_desirable, reference_matched, z0, z0_raw, config, class_weights
    )


def z0_of(config: TrainConfig, mismatched_policy, reference_mismatched, zero) -> tuple[torch.Tensor, torch.Tensor]:
    """(z0, z0_raw) of one microbatch from its mismatched log-probs (all-reduced across processes)."""
    if mismatched_policy is None:  # no_z0, --z0-zero, or a loss without a reference point
        return zero, zero
    if config.loss == "reference_free":
        # π_ref uniform: its log-probs are a constant that cancels between r and z0 (Table 2,
        # "no π_ref"), so z0 = mean log π_θ(y_j|x_i), unclamped (without the dropped constant it
        # is no longer a KL, so its sign means nothing).
        return kto_loss.reference_point(mismatched_policy, torch.zeros_like(mismatched_policy), clamp=False)
    return kto_loss.reference_point(mismatched_policy, reference_mismatched)


def loss_from_logps(
    policy_logps: torch.Tensor,
    token_counts: torch.Tensor,
    is_desirable: torch.Tensor,
    reference_matched: torch.Tensor | None,
    z0: torch.Tensor,
    z0_raw: torch.Tensor,
    config: TrainConfig,
    class_weights: dict,
) -> tuple[torch.Tensor, dict]:
    """One microbatch's loss and statistics from its matched sequences' log-probs (with grad),
    its reference log-probs and its z0 (both without grad)."""
    zero = torch.zeros((), device=policy_logps.device)
    n_matched = policy_logps.shape[0]
    if config.loss in ("sft", "csft"):  # csft's control tokens are already in the prompts
        loss = kto_loss.sft_loss(policy_logps, token_counts)
        stats = {"z0": zero, "z0_raw": zero}
        stats.update(kto_loss.reward_statistics(policy_logps.detach(), is_desirable, zero))
        return loss, stats
    if config.loss == "dpo":
        half = n_matched // 2
        loss, stats = kto_loss.dpo_loss(
            policy_logps[:half], policy_logps[half:], reference_matched[:half], reference_matched[half:], config.beta
        )
        stats.update(z0=zero, z0_raw=zero)
        return loss, stats
    if config.loss == "slic":
        half = n_matched // 2
        loss, stats = kto_loss.slic_loss(
            policy_logps[:half], policy_logps[half:], defaults.SLIC_DELTA, defaults.SLIC_REGULARIZATION
        )
        stats.update(z0=zero, z0_raw=zero)
        return loss, stats
    if config.loss == "reference_free":
        reference_matched = torch.zeros_like(policy_logps)  # see z0_of
    value = config.loss if config.loss in ("concave", "risk_neutral") else "kto"
    loss, stats = kto_loss.kto_loss(
        policy_logps,
        reference_matched,
        is_desirable,
        z0,
        config.beta,
        class_weights["desirable_weight"],
        class_weights["undesirable_weight"],
        value,
    )
    stats.update(z0=z0, z0_raw=z0_raw)
    return loss, stats


# ----------------------------------------------------------------------------------------------
# One optimizer step in as few forward calls as the token budget allows
#
# The plan's logical microbatches stay what they were (z0 is estimated within each, the loss is
# each one's mean, and the step's gradient is their average), so the numbers do not change; only
# how sequences are grouped into forward calls does:
#   - every no-grad score of the step (the policy on the mismatched pairs, a live reference on
#     matched and mismatched) first, length-sorted into calls of up to 2 × token_budget tokens;
#   - then the matched sequences with gradient, consecutive microbatches in one call while they fit
#     token_budget, one backward per call;
#   - each call packed without padding (data.pack) when the model supports it, else right-padded.


@dataclass
class HostMicrobatch:
    """One logical microbatch on the host: sequences as joined (token ids, number of prompt tokens)."""

    matched: list[tuple[list[int], int]]
    mismatched: list[tuple[list[int], int]]
    is_desirable: torch.Tensor
    reference_matched: torch.Tensor | None
    reference_mismatched: torch.Tensor | None
    n_tokens: int

    @property
    def n_examples(self) -> int:
        return len(self.matched)


def joined_sequences(examples, keys: list[tuple[int, int]], config: TrainConfig) -> list[tuple[list[int], int]]:
    truncation = "keep_start" if config.trl_compat else "keep_completion"
    return [
        kto_data.join_truncated(examples[i].prompt_ids, examples[j].completion_ids, config.max_length, truncation)
        for i, j in keys
    ]


def joined_key(ids: list[int], n_prompt: int) -> str:
    """sequence_keys' digest for one joined sequence (the same key as its collated row)."""
    digest = hashlib.blake2b(digest_size=16)
    # The bytes of sequence_keys' little-endian int64 row, without a tensor (no operator calls).
    digest.update(struct.pack(f"<{len(ids)}q", *ids))
    digest.update(bytes(n_prompt) + b"\x01" * (len(ids) - n_prompt))
    return digest.hexdigest()


def host_microbatch(examples, local_indices: list[int], config: TrainConfig, reference_cache) -> HostMicrobatch:
    matched_keys, mismatched_keys = microbatch_keys(local_indices, config)
    matched = joined_sequences(examples, matched_keys, config)
    mismatched = joined_sequences(examples, mismatched_keys, config)
    reference_matched = reference_mismatched = None
    if reference_cache is not None:
        reference_matched = torch.tensor([reference_cache[joined_key(*sequence)] for sequence in matched])
        if mismatched:
            reference_mismatched = torch.tensor([reference_cache[joined_key(*sequence)] for sequence in mismatched])
    return HostMicrobatch(
        matched,
        mismatched,
        torch.tensor([examples[i].label for i, _ in matched_keys]),
        reference_matched,
        reference_mismatched,
        sum(len(ids) for ids, _ in matched),
    )


def forward_inputs(joined: list[tuple[list[int], int]], pad_token_id: int, packing: bool) -> dict[str, Any]:
    """Model inputs for one call: packed rows (SequenceLogProbs reads sequence_ids) or padded rows."""
    if packing:
        return dict(kto_data.pack(joined, pad_token_id), n_sequences=len(joined))
    width = max(len(ids) for ids, _ in joined)
    batch = kto_data.collate([(ids[:n], ids[n:]) for ids, n in joined], width, pad_token_id)
    if bool(batch["attention_mask"].all()):
        batch["attention_mask"] = None  # no padding: decided here on the host, no device sync later
    return batch


def call_groups(lengths: list[int], budget: int, packing: bool) -> list[list[int]]:
    """Indices of sequences grouped (longest first) into calls of at most ``budget`` tokens
    (padded: rows × the longest; packed: the tokens themselves); a longer sequence goes alone."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = used = 0
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        length = lengths[index]
        cost = used + length if packing else (len(current) + 1) * max(longest, length)
        if current and cost > budget:
            groups.append(current)
            current, longest, used = [], 0, 0
        current.append(index)
        longest, used = max(longest, length), used + length
    if current:
        groups.append(current)
    return groups


def score_no_grad(
    module,
    joined: list[tuple[list[int], int]],
    budget: int,
    pad_token_id: int,
    packing: bool,
    device,
    context=None,
    share_prefixes: bool = False,
) -> torch.Tensor:
    """log π of every sequence (no gradient) in budgeted calls; in the input order, on the device.
    ``share_prefixes`` (packed rows only): sequences that begin with the same prompt tokens are
    scored as one tree, those tokens computed once (data.prefix_trees); a tree is never split
    across calls."""
    result = torch.empty(len(joined), device=device)
    if not joined:  # every mismatched sequence of a microbatch merged into the grad call
        return result
    if packing and share_prefixes:
        # A tree may be up to twice the longest sequence: rows get wider (attention over more
        # positions) but hold far fewer tokens when prompts are long.
        trees = kto_data.prefix_trees(joined, width_limit=2 * max(len(ids) for ids, _ in joined))
    else:
        trees = [[index] for index in range(len(joined))]
    lengths = [kto_data.tree_length(joined, tree) for tree in trees]
    groups = call_groups(lengths, budget, packing) if budget > 0 else [list(range(len(trees)))]
    with torch.no_grad(), context() if context is not None else contextlib.nullcontext():
        for group in groups:
            members = [index for tree in group for index in trees[tree]]
            call = [joined[index] for index in members]
            if packing:
                local_trees, start = [], 0
                for tree in group:  # the same trees, indexed within this call
                    local_trees.append(list(range(start, start + len(trees[tree]))))
                    start += len(trees[tree])
                inputs = dict(kto_data.pack(call, pad_token_id, trees=local_trees), n_sequences=len(call))
            else:
                inputs = forward_inputs(call, pad_token_id, packing)
            logps = module(**_to_device(inputs, device))[0]
            result[torch.tensor(members, device=device)] = logps.float()
    return result


def grad_units(
    microbatches: list[HostMicrobatch], budget: int, packing: bool, merged: list[list[int]] | None = None
) -> list[list[int]]:
    """Consecutive microbatches (indices) per forward call with gradient, within the token budget.
    ``merged``: per microbatch, the mismatched sequences scored as branches in the same call
    (merged_positions); each adds its own part (last prompt token + completion) to the call."""
    if budget <= 0:
        return [[index] for index in range(len(microbatches))]

    def branch_tokens(index: int) -> int:
        mismatched = microbatches[index].mismatched
        return sum(len(mismatched[k][0]) - (mismatched[k][1] - 1) for k in (merged[index] if merged else ()))

    units: list[list[int]] = []
    current: list[int] = []
    for index in range(len(microbatches)):
        candidate = current + [index]
        sequences = [sequence for i in candidate for sequence in microbatches[i].matched]
        lengths = [len(ids) for ids, _ in sequences]
        cost = sum(lengths) + sum(branch_tokens(i) for i in candidate) if packing else len(lengths) * max(lengths)
        if current and cost > budget:
            units.append(current)
            candidate = [index]
        current = candidate
    units.append(current)
    return units


def mismatched_merge_ratio(model, lora: bool, layer_recompute: bool = False) -> float:
    """How many times longer than its own part (last prompt token + completion) a mismatched
    sequence's shared prompt must be for scoring it inside the call with gradient to cost fewer
    FLOPs than a separate no-grad pass. Per token a forward costs about 2 × the decoder's weights
    (2 × the head's at scored positions), a backward 2× the forward (1× with LoRA: no weight
    gradients). Merging saves the forward over the prompt but the last token and adds a backward
    over the branch: worth it when (prompt − 1) > backward factor × (1 + head / decoder) × branch.
    Layer checkpointing adds a second decoder forward over the branch in backward: + 1."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    decoder = sum(parameter.numel() for parameter in model.parameters()) - embedding.numel()
    if head.data_ptr() != embedding.data_ptr():
        decoder -= head.numel()
    return (1.0 if lora else 2.0) * (1.0 + head.numel() / max(decoder, 1)) + (1.0 if layer_recompute else 0.0)


def merged_positions(microbatch: HostMicrobatch, merge_ratio: float) -> list[int]:
    """Positions of the microbatch's mismatched sequences to score as branches of their matched
    sequence (same prompt tokens, prompt long enough for merge_ratio); none when it is 0.

    Only the prompt tokens that no other sharing covers count: where another matched prompt of the
    microbatch begins with the same tokens (the same prompt, or a system prompt of at least
    MIN_SHARED_PREFIX tokens), those are shared anyway (data.prefix_trees), in the call with
    gradient and in the no-grad pass, and a merged pair would keep its matched sequence out of that
    tree."""
    if merge_ratio <= 0:
        return []
    matched = microbatch.matched
    positions = []
    for position, ((ids, n_prompt), (other_ids, other_n_prompt)) in enumerate(zip(matched, microbatch.mismatched)):
        shared = n_prompt - 1
        if n_prompt == other_n_prompt and ids[:n_prompt] == other_ids[:n_prompt]:
            covered = max(
                (_prefix_shared_with(ids, n_prompt, *sequence) for k, sequence in enumerate(matched) if k != position),
                default=0,
            )
            if shared - covered > merge_ratio * (len(other_ids) - shared):
                positions.append(position)
    return positions


def _prefix_shared_with(ids, n_prompt: int, other_ids, other_n_prompt: int) -> int:
    """Prompt tokens of (ids, n_prompt) that prefix sharing computes once with the other sequence."""
    limit = min(n_prompt, other_n_prompt) - 1
    common = kto_data.common_prefix_length(ids, other_ids, max(limit, 0))
    identical = n_prompt == other_n_prompt and ids[:n_prompt] == other_ids[:other_n_prompt]
    return common if identical or common >= kto_data.MIN_SHARED_PREFIX else 0


def train_step(
    policy_ddp,
    policy_for_no_grad: SequenceLogProbs,
    reference: Reference | None,
    microbatches: list[HostMicrobatch],
    config: TrainConfig,
    class_weights: dict,
    pad_token_id: int,
    accelerator,
    step_window: dict,
    token_budget: int,
    packing: bool,
    timer: SectionTimer,
    share_prefixes: bool = False,
    merge_ratio: float = 0.0,
) -> None:
    """Losses and gradients of one optimizer step (backward done; the caller clips and steps).

    ``merge_ratio`` > 0 (one process, shared prompts): a mismatched sequence whose prompt is more
    than that many times longer than its own part (see mismatched_merge_ratio) is scored as a
    branch of its matched sequence's tree in the call with gradient, instead of in the no-grad
    pass: its prompt is then not computed a second time. Its log-prob is detached, so z0 and the
    gradients are the same."""
    device = accelerator.device
    merged = [merged_positions(mb, merge_ratio) for mb in microbatches]
    zero = torch.zeros((), device=device)
    no_grad_budget = 2 * token_budget
    # 1. Everything without gradient, for the whole step: the weights do not change within it.
    mismatched_policy: list = [None] * len(microbatches)
    reference_matched = [mb.reference_matched for mb in microbatches]
    reference_mismatched = [mb.reference_mismatched for mb in microbatches]
    with timer.section("no_grad"), accelerator.autocast():
        if config.variant.needs_reference and reference_matched[0] is None:
            joined = [s for mb in microbatches for s in mb.matched + mb.mismatched]
            if token_budget > 0:
                scores = score_no_grad(
                    reference.module,
                    joined,
                    no_grad_budget,
                    pad_token_id,
                    packing,
                    device,
                    reference._context,
                    share_prefixes,
                )
            else:
                scores = torch.cat(
                    [
                        score_no_grad(
                            reference.module,
                            mb.matched + mb.mismatched,
                            0,
                            pad_token_id,
                            packing,
                            device,
                            reference._context,
                            share_prefixes,
                        )
                        for mb in microbatches
                    ]
                )
            offset = 0
            for index, mb in enumerate(microbatches):
                reference_matched[index] = scores[offset : offset + len(mb.matched)]
                offset += len(mb.matched)
                if mb.mismatched:
                    reference_mismatched[index] = scores[offset : offset + len(mb.mismatched)]
                    offset += len(mb.mismatched)
        if microbatches[0].mismatched:
            # Each microbatch's mismatched sequences scored here (the merged ones: in the grad call).
            apart = [
                [k for k in range(len(mb.mismatched)) if k not in merged[index]]
                for index, mb in enumerate(microbatches)
            ]
            if token_budget > 0:
                joined = [microbatches[index].mismatched[k] for index in range(len(microbatches)) for k in apart[index]]
                # Shared system prompts (data.prefix_trees) are computed once here too.
                scores = score_no_grad(
                    policy_for_no_grad, joined, no_grad_budget, pad_token_id, packing, device, None, share_prefixes
                )
                counts = [len(positions) for positions in apart]
                scored = list(torch.split(scores, counts))
            else:
                scored = [
                    score_no_grad(
                        policy_for_no_grad,
                        [mb.mismatched[k] for k in apart[index]],
                        0,
                        pad_token_id,
                        packing,
                        device,
                        None,
                        share_prefixes,
                    )
                    for index, mb in enumerate(microbatches)
                ]
            for index, mb in enumerate(microbatches):
                if merged[index]:  # the merged positions are filled in after the grad call
                    mismatched_policy[index] = torch.empty(len(mb.mismatched), device=device)
                    mismatched_policy[index][apart[index]] = scored[index]
                else:
                    mismatched_policy[index] = scored[index]

    # z0 of every microbatch now (its all-reduce runs in the same order on every process); a
    # microbatch with merged sequences gets its z0 right after the call that scores them.
    def z0_of_microbatch(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        reference_mm = reference_mismatched[index]
        return z0_of(
            config, mismatched_policy[index], reference_mm.to(device) if reference_mm is not None else None, zero
        )

    z0s = [None if merged[index] else z0_of_microbatch(index) for index in range(len(microbatches))]
    # 2. The matched sequences with gradient, a unit of microbatches per call.
    units = grad_units(microbatches, token_budget, packing, merged)
    with timer.section("grad"):
        for unit_index, unit in enumerate(units):
            joined = [s for i in unit for s in microbatches[i].matched]
            n_matched = len(joined)
            trees = [[position] for position in range(n_matched)]
            offset = 0
            for i in unit:  # each merged mismatched sequence becomes a branch of its matched one's tree
                for k in merged[i]:
                    trees[offset + k].append(len(joined))
                    joined.append(microbatches[i].mismatched[k])
                offset += len(microbatches[i].matched)
            if share_prefixes:
                # The other matched sequences share what their prompts begin with (a prompt with
                # several completions, a system prompt), with gradient: the shared positions'
                # gradients sum over their branches, as they would over separate copies.
                alone = [tree[0] for tree in trees if len(tree) == 1]
                width = 2 * max(len(joined[position][0]) for position in alone) if alone else 0
                grouped = kto_data.prefix_trees([joined[position] for position in alone], width) if alone else []
                trees = [tree for tree in trees if len(tree) > 1] + [[alone[t] for t in tree] for tree in grouped]
                inputs = dict(kto_data.pack(joined, pad_token_id, trees=trees), n_sequences=len(joined))
            else:
                inputs = forward_inputs(joined, pad_token_id, packing)
            inputs = _to_device(inputs, device)
            is_last = unit_index == len(units) - 1
            # Gradients are averaged across processes only on the last call of the step.
            sync_context = contextlib.nullcontext() if is_last else accelerator.no_sync(policy_ddp)
            with sync_context, accelerator.autocast():
                logps, token_counts = policy_ddp(**inputs)
                if len(joined) > n_matched:
                    branch_logps = logps[n_matched:].detach().float()
                    offset = 0
                    for i in unit:
                        if merged[i]:
                            mismatched_policy[i][merged[i]] = branch_logps[offset : offset + len(merged[i])]
                            offset += len(merged[i])
                            z0s[i] = z0_of_microbatch(i)
                    logps, token_counts = logps[:n_matched], token_counts[:n_matched]
                total = zero
                offset = 0
                for index in unit:
                    mb = microbatches[index]
                    n = mb.n_examples
                    reference_m = reference_matched[index]
                    loss, stats = loss_from_logps(
                        logps[offset : offset + n],
                        token_counts[offset : offset + n],
                        mb.is_desirable.to(device),
                        reference_m.to(device) if reference_m is not None else None,
                        *z0s[index],
                        config,
                        class_weights,
                    )
                    offset += n
                    total = total + loss
                    _accumulate(step_window, loss, stats)
                    step_window["examples"] += mb.n_examples
                    step_window["tokens"] += mb.n_tokens
                accelerator.backward(total / len(microbatches))


def _train_step_per_microbatch(
    policy_ddp,
    policy_for_no_grad,
    reference,
    local_microbatches: list[list[int]],
    examples,
    config: TrainConfig,
    class_weights: dict,
    pad_token_id: int,
    reference_cache,
    accelerator,
    step_window: dict,
) -> None:
    """One optimizer step, one padded forward call per microbatch (offline PPO's per-token path)."""
    for index, local in enumerate(local_microbatches):
        batch = build_microbatch(examples, local, config, pad_token_id, reference_cache)
        device_batch = {
            key: (
                _to_device(value, accelerator.device)
                if isinstance(value, dict) or value is None
                else value.to(accelerator.device)
                if isinstance(value, torch.Tensor)
                else value
            )
            for key, value in batch.items()
        }
        is_last = index == len(local_microbatches) - 1
        # Gradients are averaged across processes only on the last microbatch of the step.
        sync_context = contextlib.nullcontext() if is_last else accelerator.no_sync(policy_ddp)
        with sync_context, accelerator.autocast():
            loss, stats = microbatch_loss(
                policy_ddp, policy_for_no_grad, reference, device_batch, config, class_weights, pad_token_id
            )
            accelerator.backward(loss / len(local_microbatches))
        _accumulate(step_window, loss, stats)
        step_window["examples"] += batch["n_examples"]
        step_window["tokens"] += batch["n_tokens"]


# ----------------------------------------------------------------------------------------------
# Data: read, tokenize, plan


def prepare_examples(config: TrainConfig, tokenizer) -> tuple[list[kto_data.TokenizedExample], int, int]:
    """Tokenized units and the (n_desirable, n_undesirable) counts. For the paired losses the
    units are pairs flattened as [chosen_0, rejected_0, chosen_1, ...]."""
    variant = config.variant
    if variant.paired:
        pairs = kto_data.read_preference_pairs(config.data)
        flat = []
        for pair in pairs:
            flat.append(kto_data.KTOExample(pair.prompt, pair.chosen, True, pair.line, pair.chosen_messages))
            flat.append(kto_data.KTOExample(pair.prompt, pair.rejected, False, pair.line, pair.rejected_messages))
        return kto_data.tokenize_examples(tokenizer, flat, config.max_prompt_length), len(pairs), len(pairs)
    examples = kto_data.read_kto_jsonl(config.data)
    if variant.rows == "desirable":
        examples = [example for example in examples if example.label]
        if not examples:
            raise TrainingError(
                f"{config.data}: the {config.loss} baseline trains on desirable examples and there are none"
            )
    tokenized = kto_data.tokenize_examples(tokenizer, examples, config.max_prompt_length)
    if config.trl_compat:
        tokenized = [example for example in tokenized if kto_data.fits_trl_max_length(example, config.max_length)]
    if config.loss == "csft":
        # Conditional SFT: the label's control token ends the prompt, so the completion is learnt
        # "given <|good|>" or "given <|bad|>"; generation then appends <|good|> (csft_control_ids).
        control_ids = dict(zip((True, False), csft_control_ids(tokenizer)))
        tokenized = [
            kto_data.TokenizedExample(
                example.prompt_ids + (control_ids[example.label],), example.completion_ids, example.label
            )
            for example in tokenized
        ]
    n_desirable = sum(example.label for example in tokenized)
    return tokenized, n_desirable, len(tokenized) - n_desirable


def add_token_rows(model, vocabulary_size: int) -> None:
    """Rows for added tokens, set to the mean of the existing ones: a neutral input, and (as an
    output row) an average logit, so the model is not drawn to emit a token it never saw."""
    old_size = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(vocabulary_size, mean_resizing=False)
    with torch.no_grad():
        for layer in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
            layer.weight[old_size:] = layer.weight[:old_size].mean(0)
            if getattr(layer, "bias", None) is not None:
                layer.bias[old_size:] = layer.bias[:old_size].mean()


def csft_control_ids(tokenizer) -> tuple[int, int]:
    """Ids of CSFT's control tokens, added to the tokenizer as special tokens when missing."""
    missing = [token for token in defaults.CSFT_CONTROL_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return tuple(tokenizer.convert_tokens_to_ids(token) for token in defaults.CSFT_CONTROL_TOKENS)


def plan_steps(examples, config: TrainConfig, world_size: int) -> list[tuple[int, list[list[int]]]]:
    """Every optimizer step as (epoch, its global microbatches). Deterministic in the seed, so a
    resumed run replays exactly the same order."""
    micro = config.per_device_train_batch_size * world_size
    if config.trl_compat:
        return kto_data.plan_trl_steps(
            len(examples),
            config.per_device_train_batch_size,
            world_size,
            config.gradient_accumulation_steps,
            config.num_train_epochs,
            config.max_steps,
        )
    if config.variant.paired:
        lengths = [
            max(
                kto_data.sequence_length(examples[2 * k], config.max_length),
                kto_data.sequence_length(examples[2 * k + 1], config.max_length),
            )
            for k in range(len(examples) // 2)
        ]
    else:
        lengths = [kto_data.sequence_length(example, config.max_length) for example in examples]
    steps = []
    for epoch in range(math.ceil(config.num_train_epochs)):
        microbatches = kto_data.plan_epoch(lengths, micro, config.seed, epoch)
        if epoch + 1 > config.num_train_epochs:  # a fractional last epoch
            microbatches = microbatches[: int(len(microbatches) * (config.num_train_epochs - epoch))]
        for start in range(0, len(microbatches), config.gradient_accumulation_steps):
            steps.append((epoch, microbatches[start : start + config.gradient_accumulation_steps]))
    if config.max_steps > 0:
        steps = steps[: config.max_steps]
    return steps


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    """Every RNG's state as plain types and tensors, so it loads with torch.load(weights_only=True)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        name, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached_gaussian)
    except ImportError:
        pass
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        name, keys, position, has_gauss, cached_gaussian = state["numpy"]
        numpy.random.set_state((name, keys.numpy().astype("uint32"), position, has_gauss, cached_gaussian))


def save_checkpoint(
    out: Path, step: int, epoch: int, model, optimizer, scheduler, accelerator, tokenizer, skipped_steps: int = 0
) -> Path:
    """OUT/checkpoints/step-N/: weights or adapter, optimizer, scheduler, RNG, step and data position.
    Written under a temporary name and renamed, so a checkpoint directory is always complete."""
    final = out / "checkpoints" / f"step-{step}"
    temporary = out / "checkpoints" / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), temporary / f"rng-{accelerator.process_index}.pt")
    sharded = kto_distributed.is_sharded(accelerator)
    if sharded:
        # Every rank writes its shard of the weights and optimizer state (resumed with load_state).
        accelerator.save_state(str(temporary / kto_distributed.SHARDED_STATE_DIR))
    if accelerator.is_main_process:
        if not sharded:
            model.save_pretrained(temporary)
            torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        tokenizer.save_pretrained(temporary)
        torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Data position: steps are planned deterministically from the seed, so the step count
        # (with the epoch, for readers) pins the data order exactly.
        (temporary / "trainer_state.json").write_text(
            json.dumps({"step": step, "epoch": epoch, "skipped_steps": skipped_steps})
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


def load_plain(path: Path):
    """torch.load of tensors and plain containers only: a pickle that would construct anything
    else (run code) is refused, never executed."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        raise TrainingError(
            f"{path}: refused to load, it holds more than tensors and plain values ({str(error).splitlines()[0][:200]})"
        ) from None


def latest_checkpoint(out: Path) -> Path | None:
    candidates = []
    for path in (out / "checkpoints").glob("step-*"):
        if (path / "trainer_state.json").is_file() and path.name[5:].isdigit():
            candidates.append((int(path.name[5:]), path))
    return max(candidates)[1] if candidates else None


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    from safetensors.torch import load_file

    if (checkpoint / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        return
    shard_files = sorted(checkpoint.glob("model*.safetensors"))
    if not shard_files:
        raise TrainingError(f"{checkpoint}: no model weights to resume from")
    state = {}
    for shard in shard_files:
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - set(dict(model.named_parameters()))
    if unexpected or [name for name in missing if name not in tied and "lm_head" not in name]:
        raise TrainingError(
            f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


# ----------------------------------------------------------------------------------------------
# Output files


def write_json_atomic(path: Path, payload: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop lines logged after the checkpoint (the killed run may have gone further)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut short by the kill
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# train()


def check_config(config: TrainConfig) -> None:
    if config.loss not in kto_loss.VARIANTS:
        raise TrainingError(f"--loss must be one of {', '.join(kto_loss.LOSS_TYPES)}, got {config.loss!r}")
    if config.trl_compat and config.loss != "kto":
        raise TrainingError(
            f"--trl-compat reproduces TRL's KTOTrainer, which trains --loss kto; got --loss {config.loss}"
        )
    if config.max_prompt_length is not None and config.max_prompt_length < 1:
        raise TrainingError(f"--max-prompt-length must be at least 1, got {config.max_prompt_length}")
    if config.reference not in ("precompute", "copy"):
        raise TrainingError(f"--reference must be 'precompute' or 'copy', got {config.reference!r}")
    if config.uses_mismatched:
        try:
            kto_data.mismatched_partners(config.per_device_train_batch_size)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    if config.loss == "csft" and config.lora:
        raise TrainingError(
            "--loss csft adds two control tokens to the vocabulary, whose embeddings must be "
            "trained: use full fine-tuning (no --lora)"
        )
    for name in (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "max_length",
        "logging_steps",
        "max_nonfinite_steps",
    ):
        if getattr(config, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.max_length < 2:
        raise TrainingError("--max-length must be at least 2")
    if not config.num_train_epochs > 0:
        raise TrainingError(f"--num-train-epochs must be positive, got {config.num_train_epochs}")
    if config.compile_backend and config.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
        raise TrainingError(
            f"--compile {config.compile_backend}: no such torch.compile backend "
            f"(known: {', '.join(torch._dynamo.list_backends())})"
        )
    if config.checkpoint_policy not in (*CHECKPOINT_POLICIES, "auto"):
        raise TrainingError(
            f"--checkpoint-policy must be one of {', '.join(CHECKPOINT_POLICIES)} or auto, "
            f"got {config.checkpoint_policy!r}"
        )
    if not config.memory_limit_gib >= 0:
        raise TrainingError(f"--memory-limit-gib must be 0 (the device's) or more, got {config.memory_limit_gib}")
    if config.profile_steps < 0:
        raise TrainingError(f"--profile-steps must be 0 (off) or more, got {config.profile_steps}")
    if config.beta <= 0 or config.learning_rate <= 0:
        raise TrainingError("--beta and --learning-rate must be positive")
    if not 0 <= config.warmup_ratio < 1:
        raise TrainingError(f"--warmup-ratio must be in [0, 1), got {config.warmup_ratio}")
    if not Path(config.model).exists():
        raise TrainingError(
            f"--model {config.model}: no such directory (no model hub is used; give a local save_pretrained directory)"
        )
    if is_peft_dir(config.model):
        raise TrainingError("--model is a LoRA adapter directory; train from a full model (its base)")
    out = Path(config.out)
    if config.resume:
        if not (out / "config.json").is_file():
            raise TrainingError(f"--resume: {out} holds no run to resume (no config.json)")
        previous = json.loads((out / "config.json").read_text())["config"]
        changed = [name for name in TrainConfig.RESULT_FIELDS if previous.get(name) != getattr(config, name)]
        if changed:
            raise TrainingError(f"--resume: options differ from the original run in {', '.join(changed)}")
    elif out.exists() and any(out.iterdir()):
        raise TrainingError(f"--out {out} exists and is not empty; choose a new directory or pass --resume")


def run_identity(config: TrainConfig, world_size: int, use_bf16: bool) -> dict:
    """What a resumed run must share with the original, beyond its options: the same processes
    (the data order and z0's batches depend on them), precision, data and model contents."""
    return {
        "world_size": world_size,
        "precision": "bf16" if use_bf16 else "fp32",
        "data_sha256": kto_data.file_sha256(config.data),
        "model_fingerprint": model_fingerprint(config.model),
    }


def check_resume_identity(out: Path, identity: dict) -> None:
    previous = json.loads((out / "config.json").read_text()).get("run_identity")
    if previous is None:
        raise TrainingError(
            f"--resume: {out}/config.json records no world size, precision, data or model hash "
            "(written by an older engine); start a new run"
        )
    what = {
        "world_size": "number of processes",
        "precision": "precision",
        "data_sha256": "data file contents (sha256)",
        "model_fingerprint": "model weights/config (fingerprint)",
    }
    differences = [
        f"{what[name]}: was {previous.get(name)}, now {value}"
        for name, value in identity.items()
        if previous.get(name) != value
    ]
    if differences:
        raise TrainingError("--resume refused, the run would not continue the same training: " + "; ".join(differences))


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere (TRL's disable_dropout): with it on, the no-grad passes (reference,
    z0) and the policy pass see different noise, so r ≠ 0 at step 1 and z0 is noisy."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # Attention implementations that take the rate as a float attribute, not a module.
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def _is_fsdp_module(module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def plan_memory(
    policy: SequenceLogProbs,
    examples,
    steps,
    config: TrainConfig,
    pad_token_id: int,
    accelerator,
    token_budget: int,
    packing: bool,
    live_reference_copy: bool,
    branches_in_grad_call: bool,
) -> kto_memory_plan.MemoryPlan:
    """--checkpoint-policy auto: measure each policy's activations on this run's own sequences and
    model, then choose (memory_plan.py). Every process chooses alike, from the worst figures of all.
    ``branches_in_grad_call``: mismatched sequences may be scored as branches in the call with
    gradient (merged_positions, which depends on the policy chosen here): counted as if all were."""
    rank, per_device = accelerator.process_index, config.per_device_train_batch_size
    max_length = config.max_length
    largest = 0
    for _, microbatches in steps:
        for global_microbatch in microbatches:
            keys, mismatched_keys = microbatch_keys(
                global_microbatch[rank * per_device : (rank + 1) * per_device], config
            )
            # Lengths only (both truncations keep min(prompt + completion, max_length) tokens); a
            # branch is at most its completion plus the prompt's last token.
            lengths = [min(len(examples[i].prompt_ids) + len(examples[j].completion_ids), max_length) for i, j in keys]
            tokens = sum(lengths) if packing else len(lengths) * max(lengths)
            if branches_in_grad_call:
                tokens += sum(min(len(examples[j].completion_ids), max_length - 1) + 1 for _, j in mismatched_keys)
            largest = max(largest, tokens)
    # The measuring calls: the first microbatch's longest sequences, up to PROBE_TOKENS (at least
    # one), and the same cut to half their length.
    keys, _ = microbatch_keys(steps[0][1][0][rank * per_device : (rank + 1) * per_device], config)
    probe: list[tuple[list[int], int]] = []
    for sequence in sorted(joined_sequences(examples, keys, config), key=lambda sequence: -len(sequence[0])):
        if probe and sum(len(ids) for ids, _ in probe) + len(sequence[0]) > kto_memory_plan.PROBE_TOKENS:
            break
        probe.append(sequence)
    halves = [(ids[: max(2, len(ids) // 2)], min(n_prompt, max(2, len(ids) // 2) - 1)) for ids, n_prompt in probe]

    def call(sequences: list[tuple[list[int], int]]) -> tuple[dict, int]:
        inputs = _to_device(forward_inputs(sequences, pad_token_id, packing), accelerator.device)
        return inputs, sum(len(ids) for ids, _ in sequences)

    per_token, per_call = kto_memory_plan.measure(policy, call(halves), call(probe), accelerator.autocast)
    resident = kto_memory_plan.weight_bytes(policy.model) * (2 if live_reference_copy else 1)
    limit = kto_memory_plan.device_limit_bytes(accelerator.device, config.memory_limit_gib, resident)
    if accelerator.num_processes > 1:
        # Every rank must choose alike (FSDP's recompute gathers parameters: different policies would
        # hang): the smallest limit, the largest call and the largest counts of all ranks.
        policies = kto_memory_plan.CANDIDATES
        local = torch.tensor(
            [-limit, largest, *(per_token[p] for p in policies), *(per_call[p] for p in policies)],
            dtype=torch.float64,
            device=accelerator.device,
        )
        worst = accelerator.gather(local.reshape(1, -1)).amax(dim=0).tolist()
        limit, largest = int(-worst[0]), int(worst[1])
        per_token = dict(zip(policies, worst[2 : 2 + len(policies)], strict=True))
        per_call = dict(zip(policies, worst[2 + len(policies) :], strict=True))
    fixed = kto_memory_plan.fixed_bytes(policy.model, live_reference_copy, max(token_budget, largest))
    return kto_memory_plan.choose(per_token, per_call, fixed, limit, token_budget, largest)


def compile_decoder_layers(model: torch.nn.Module, backend: str) -> int:
    """torch.compile every decoder layer in place (the classes transformers lists as
    ``_no_split_modules``); returns how many. Dynamic shapes: packed rows change width every call."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_classes = set(getattr(base, "_no_split_modules", None) or ())
    layers = [module for module in base.modules() if type(module).__name__ in layer_classes]
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)


def train(config: TrainConfig) -> dict | None:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    clock = PhaseClock()
    # 1. Options and data, before anything is written.
    check_config(config)
    variant = config.variant
    out = Path(config.out)
    tokenizer = load_tokenizer(config.model)
    examples, n_desirable, n_undesirable = prepare_examples(config, tokenizer)
    class_weights = resolve_class_weights(config, n_desirable, n_undesirable)

    use_bf16 = config.bf16 == "yes" or (config.bf16 == "auto" and torch.cuda.is_available())
    # cpu=True without CUDA: under `accelerate launch --num_processes N` this selects gloo
    # multi-CPU data parallelism instead of N independent single processes.
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    problem = (
        kto_distributed.world_size_problem(accelerator.num_processes, config.expected_world_size)
        or kto_distributed.unsupported_backend_problem(accelerator)
        or kto_distributed.lost_fsdp_problem(accelerator)
        # Collective: reached by every rank alike, since the checks before it agree on every rank.
        or kto_distributed.unshared_out_problem(accelerator, out)
    )
    if problem:
        accelerator.end_training()
        raise TrainingError(problem)
    token_budget = config.token_budget
    if token_budget == defaults.AUTO:
        token_budget = defaults.TOKEN_BUDGET_CUDA if torch.cuda.is_available() else defaults.TOKEN_BUDGET_CPU
    identity = run_identity(config, accelerator.num_processes, use_bf16)
    if config.resume:
        check_resume_identity(out, identity)
    set_seed(config.seed)  # CPU kernels are deterministic for a fixed thread count
    steps = plan_steps(examples, config, accelerator.num_processes)
    if not steps:
        raise TrainingError(
            f"{config.data}: {len(examples)} examples do not fill one microbatch of "
            f"{config.per_device_train_batch_size} × {accelerator.num_processes} processes"
        )
    warmup_steps = math.ceil(config.warmup_ratio * len(steps))
    if accelerator.is_main_process:
        effective_batch = (
            config.per_device_train_batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        )
        print(
            f"training: loss {config.loss}, effective batch {effective_batch} "
            f"({config.per_device_train_batch_size} per device × {accelerator.num_processes} processes × "
            f"{config.gradient_accumulation_steps} accumulation), {len(steps)} optimizer steps, "
            f"{warmup_steps} warmup steps, learning rate {config.learning_rate:g}, β {config.beta:g}",
            file=sys.stderr,
            flush=True,
        )
    clock.lap("data")

    # 2. Policy, LoRA, reference.
    base_model_path = str(Path(config.model).resolve())
    model = load_causal_lm(base_model_path)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:  # csft's control tokens
        add_token_rows(model, len(tokenizer))
    if not config.keep_dropout:
        disable_dropout(model)  # before LoRA, so an explicit --lora-dropout still applies
    model.config.use_cache = False
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
            ),
        )
    chunk = config.logits_chunk_size
    if chunk == defaults.AUTO:
        chunk = max(1, defaults.LOGITS_CHUNK_ELEMENTS // model.get_output_embeddings().weight.shape[0])
    if kto_distributed.is_sharded(accelerator):
        chunk = 0  # the chunked head reads the head's weight outside its (sharded) module's forward
    policy = SequenceLogProbs(model, logits_chunk_size=chunk).to(accelerator.device)
    policy.verify()  # refuses an architecture whose log-probs the engine cannot reproduce exactly
    packing = config.packing and policy.packing_supported
    if config.packing and not packing and accelerator.is_main_process:
        print("note: packed rows disagree with padded ones for this model; packing is off", file=sys.stderr)
    # Shared prompts need packed rows and a backend that takes the engine's own attention mask.
    share_prefixes = packing and config.prefix_sharing and policy.prefix_sharing_supported
    # Per-token losses need per-token reference log-probs: computed live, not cached.
    precompute = variant.needs_reference and config.reference == "precompute" and not variant.token_level
    reference = None
    if variant.needs_reference and config.lora:
        reference = Reference(policy, disable_adapter=True)  # the base itself: no second copy
    elif precompute:
        # Before the first update the policy *is* the reference: precompute with it, no copy.
        reference = Reference(policy, disable_adapter=False)
    elif variant.needs_reference:
        # Full fine-tuning with a live reference: a frozen copy of the initial weights.
        reference = Reference(copy.deepcopy(policy).requires_grad_(False).eval(), disable_adapter=False)
    checkpointing = config.checkpoint_policy if config.gradient_checkpointing else "off"
    # One process only: the no-grad calls it saves may differ between ranks, which collective
    # (FSDP) forwards would not survive.
    merging_possible = (
        share_prefixes and config.mismatched_in_grad_call and config.uses_mismatched and accelerator.num_processes == 1
    )
    plan = None
    if checkpointing == "auto":
        plan = plan_memory(
            policy,
            examples,
            steps,
            config,
            tokenizer.pad_token_id,
            accelerator,
            # Per-token losses train on one padded call per microbatch, whatever the budget.
            0 if variant.token_level else token_budget,
            packing and not variant.token_level,
            live_reference_copy=reference is not None and reference.module is not policy,
            branches_in_grad_call=merging_possible,
        )
        checkpointing = plan.policy
        if not variant.token_level:
            token_budget = plan.token_budget
        if accelerator.is_main_process:
            print(plan.describe(), file=sys.stderr, flush=True)
    # After LoRA and the reference copy (which runs without gradient and needs none), and after
    # auto's measuring calls, which try every policy on the model.
    set_checkpointing(model, checkpointing)
    merge_ratio = (
        mismatched_merge_ratio(model, config.lora, layer_recompute=checkpointing == "layer")
        if merging_possible
        else 0.0
    )
    clock.lap("model")

    # 3-4. Reference log-probs precomputed for every sequence the planned steps will use.
    reference_cache, cache_info = None, None
    if precompute:
        keys: set[tuple[int, int]] = set()
        for _, microbatches in steps:
            for global_microbatch in microbatches:
                for rank in range(accelerator.num_processes):
                    local = global_microbatch[
                        rank * config.per_device_train_batch_size : (rank + 1) * config.per_device_train_batch_size
                    ]
                    matched_keys, mismatched_keys = microbatch_keys(local, config)
                    keys.update(matched_keys + mismatched_keys)
        reference_cache, cache_info = load_or_precompute_reference(
            reference,
            examples,
            keys,
            config,
            tokenizer.pad_token_id,
            accelerator,
            token_budget=2 * token_budget,
            packing=packing,
            identity=reference_identity(config, use_bf16),
            share_prefixes=share_prefixes,
        )
        reference = None  # training reads the cache from here on
    clock.lap("reference")

    # 5. Optimizer, schedule, resume.
    trainable = [parameter for parameter in policy.parameters() if parameter.requires_grad]
    implementation = "fused" if config.trl_compat else config.optimizer_impl  # TRL's default optim: fused AdamW
    if implementation == "fused" and not all(p.dtype.is_floating_point for p in trainable):
        implementation = "foreach"
    optimizer = torch.optim.AdamW(
        trainable,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        fused=implementation == "fused",
        foreach=implementation == "foreach",
    )

    def learning_rate_factor(step: int) -> float:
        if step < warmup_steps:
            # TRL (transformers' linear schedule) starts its warmup at 0.
            return step / warmup_steps if config.trl_compat else (step + 1) / (warmup_steps + 1)
        return max(0.0, (len(steps) - step) / max(1, len(steps) - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    policy_ddp, optimizer = accelerator.prepare(policy, optimizer)
    # FSDP replaces every parameter with a sharded one (the optimizer is re-pointed by prepare):
    # clipping and the finiteness checks must see the parameters the optimizer now steps.
    trainable = [parameter for parameter in policy_ddp.parameters() if parameter.requires_grad]
    # Sharded (FSDP): only the wrapped model's forward gathers the parameters, so every pass goes through it.
    policy_for_no_grad = policy_ddp if kto_distributed.is_sharded(accelerator) else policy
    if reference is not None and reference.module is policy:
        reference.module = policy_for_no_grad
    elif reference is not None:
        reference.module = kto_distributed.shard_frozen_copy(accelerator, reference.module)

    start_step = skipped_steps = 0
    if config.resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None and kto_distributed.is_sharded(accelerator):
            accelerator.load_state(str(checkpoint / kto_distributed.SHARDED_STATE_DIR))  # model + optimizer shards
        if checkpoint is not None and not kto_distributed.is_sharded(accelerator):
            load_checkpoint_weights(policy.model, checkpoint)
            optimizer.load_state_dict(load_plain(checkpoint / "optimizer.pt"))
        if checkpoint is not None:
            scheduler.load_state_dict(load_plain(checkpoint / "scheduler.pt"))
            _set_rng_state(load_plain(checkpoint / f"rng-{accelerator.process_index}.pt"))
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            start_step, skipped_steps = state["step"], state.get("skipped_steps", 0)
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            truncate_metrics(metrics_path, start_step)
        write_json_atomic(
            out / "config.json",
            {
                "config": config.to_dict(),
                "class_weights": class_weights,
                "n_examples": len(examples),
                "n_desirable": n_desirable,
                "n_undesirable": n_undesirable,
                "total_steps": len(steps),
                "warmup_steps": warmup_steps,
                "world_size": accelerator.num_processes,
                "distributed_type": str(accelerator.distributed_type.value),
                # Under FSDP the reference is sharded too (the policy itself, or a copy sharded like it).
                "reference_sharded": reference is not None and _is_fsdp_module(reference.module),
                "bf16": use_bf16,
                "run_identity": identity,
                "reference_cache": cache_info,
                "base_model": base_model_path,
                "torch": torch.__version__,
            },
        )
    accelerator.wait_for_everyone()
    if config.compile_backend:
        # After verify() and the reference pass (those run eagerly, once), before the first step.
        compiled = compile_decoder_layers(policy.model, config.compile_backend)
        if accelerator.is_main_process:
            print(
                f"compile: {compiled} decoder layers (torch.compile, backend {config.compile_backend}, dynamic shapes)",
                file=sys.stderr,
                flush=True,
            )
    clock.lap("setup")

    # 6. The loop.
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(steps),
        initial=start_step,
        disable=not (config.progress and accelerator.is_main_process),
        desc=f"{config.loss} training",
        unit="step",
        dynamic_ncols=True,
    )
    metrics_file = open(metrics_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    policy_ddp.train()
    window = _new_window(accelerator.device)
    timer = SectionTimer(accelerator.device)
    profiler = StepProfiler(
        config.profile_steps,
        start_step,
        len(steps),
        accelerator.device,
        out,
        write=accelerator.is_main_process,
        # Which attention kernels the operator table belongs to (sdpa, eager, flash_attention_2, ...).
        context={"attention_implementation": getattr(model.config, "_attn_implementation", None)},
    )
    last_logged: dict = {}
    train_start = time.perf_counter()
    window_start = time.perf_counter()
    trained_examples = trained_tokens = 0
    nonfinite_in_a_row = 0
    rank, per_device = accelerator.process_index, config.per_device_train_batch_size
    try:
        for step in range(start_step, len(steps)):
            epoch, microbatches = steps[step]
            profiler.before_step(step)
            step_window = _new_window(accelerator.device)
            locals_ = [
                global_microbatch[rank * per_device : (rank + 1) * per_device] for global_microbatch in microbatches
            ]
            if variant.token_level:  # offline PPO: per-token reference, one microbatch per call
                _train_step_per_microbatch(
                    policy_ddp,
                    policy_for_no_grad,
                    reference,
                    locals_,
                    examples,
                    config,
                    class_weights,
                    tokenizer.pad_token_id,
                    reference_cache,
                    accelerator,
                    step_window,
                )
            else:
                train_step(
                    policy_ddp,
                    policy_for_no_grad,
                    reference,
                    [host_microbatch(examples, local, config, reference_cache) for local in locals_],
                    config,
                    class_weights,
                    tokenizer.pad_token_id,
                    accelerator,
                    step_window,
                    # Several calls' units must match on every process (DDP/FSDP forwards are collective).
                    token_budget if accelerator.num_processes == 1 else 0,
                    packing,
                    timer,
                    share_prefixes,
                    merge_ratio,
                )
            grad_norm = kto_distributed.local_tensor(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
            # One host sync per optimizer step: a non-finite loss (on any process) or gradient norm
            # skips the update, so one bad batch cannot turn every weight into NaN.
            nonfinite = (
                (~torch.isfinite(torch.stack([step_window["loss_sum"], grad_norm.detach().float()]))).any().float()
            )
            if accelerator.num_processes > 1:
                nonfinite = accelerator.reduce(nonfinite, reduction="sum")
            completed = step + 1
            if not bool(nonfinite):
                optimizer.step()
                nonfinite_in_a_row = 0
                step_window["grad_norm"] = grad_norm.detach().float()
                step_window["steps"] = 1
                _merge(window, step_window)
            else:
                skipped_steps += 1
                nonfinite_in_a_row += 1
                print(
                    f"step {completed}: non-finite loss ({float(step_window['loss_sum']):.4g}) or gradient norm "
                    f"({float(grad_norm):.4g}): update skipped ({nonfinite_in_a_row} in a row)",
                    file=sys.stderr,
                    flush=True,
                )
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            profiler.after_step(step)
            progress.update(1)
            if nonfinite_in_a_row >= config.max_nonfinite_steps:
                if metrics_file is not None:
                    metrics_file.write(
                        json.dumps({"step": completed, "skipped_steps": skipped_steps, "aborted": "non-finite"}) + "\n"
                    )
                raise NonFiniteError(
                    f"{nonfinite_in_a_row} optimizer steps in a row (up to step {completed}) had a non-finite loss or "
                    f"gradient norm; stopped without writing a model. Check the data (rows with extreme lengths), "
                    f"lower --learning-rate, or use --bf16 no; --max-nonfinite-steps sets the limit"
                )

            if completed % config.logging_steps == 0 or completed == len(steps):
                # One host sync per logged step: all statistics travel in one tensor.
                record = _reduce_window(window, accelerator)
                elapsed = time.perf_counter() - window_start
                record.update(
                    step=completed,
                    epoch=round(
                        epoch + (completed - _first_step_of_epoch(steps, epoch)) / _steps_in_epoch(steps, epoch), 4
                    ),
                    learning_rate=scheduler.get_last_lr()[0],
                    skipped_steps=skipped_steps,
                    examples_per_s=record.pop("examples") / elapsed,
                    tokens_per_s=record.pop("tokens") / elapsed,
                    no_grad_share=no_grad_share(timer.take()),
                )
                trained_examples += window["examples"] * accelerator.num_processes
                trained_tokens += window["tokens"] * accelerator.num_processes
                if metrics_file is not None:
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()  # the web app tails this file live
                if record["loss"] is not None:
                    progress.set_postfix(loss=f"{record['loss']:.4f}", z0=f"{record['z0']:.3f}")
                    last_logged = record
                window = _new_window(accelerator.device)
                window_start = time.perf_counter()
            if config.save_steps > 0 and completed % config.save_steps == 0 and completed < len(steps):
                if not kto_distributed.all_finite(trainable, accelerator):
                    raise NonFiniteError(f"step {completed}: non-finite weights; no checkpoint written")
                save_checkpoint(
                    out,
                    completed,
                    epoch,
                    accelerator.unwrap_model(policy_ddp).model,
                    optimizer,
                    scheduler,
                    accelerator,
                    tokenizer,
                    skipped_steps,
                )
    finally:
        # Also when the run aborts (non-finite steps, out of memory, Ctrl-C): a profiler left
        # recording would slow everything after it in a long-lived process (a worker, a test run).
        profiler.close()
        progress.close()
        if metrics_file is not None:
            metrics_file.close()
    train_runtime = time.perf_counter() - train_start
    clock.lap("loop")

    # 7. final/: written under a temporary name, then renamed — never half a final model, and
    # never a non-finite one.
    if not kto_distributed.all_finite(trainable, accelerator):
        raise NonFiniteError("the trained weights are not finite; final/ was not written")
    final = out / "final"
    state_dict = kto_distributed.full_state_dict(accelerator, policy_ddp)  # every rank: FSDP gathers the shards
    if accelerator.is_main_process:
        temporary = out / f".final.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        accelerator.unwrap_model(policy_ddp).model.save_pretrained(temporary, state_dict=state_dict)
        tokenizer.save_pretrained(temporary)
        record = {
            "base_model": base_model_path,
            "loss": config.loss,
            "lora": config.lora,
            "steps": len(steps),
            "skipped_steps": skipped_steps,
            "class_weights": class_weights,
            "data_sha256": identity["data_sha256"],
        }
        if config.loss == "csft":
            # Generation and evaluation append the desirable control token to every prompt.
            record["control_tokens"] = {
                "desirable": defaults.CSFT_CONTROL_TOKENS[0],
                "undesirable": defaults.CSFT_CONTROL_TOKENS[1],
            }
            record["prompt_suffix_token"] = defaults.CSFT_CONTROL_TOKENS[0]
        write_json_atomic(temporary / "prospect_training.json", record)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    clock.lap("save")
    summary = {
        "out": str(out),
        "final": str(final),
        "steps": len(steps),
        "resumed_from_step": start_step,
        "skipped_steps": skipped_steps,
        "loss_type": config.loss,
        "lora": config.lora,
        "desirable_weight": class_weights["desirable_weight"],
        "undesirable_weight": class_weights["undesirable_weight"],
        "train_runtime_s": round(train_runtime, 3),
        "examples_per_s": trained_examples / train_runtime if train_runtime > 0 else None,
        "tokens_per_s": trained_tokens / train_runtime if train_runtime > 0 else None,
        "reference": ("none" if not variant.needs_reference else "precompute" if precompute else "copy"),
        "reference_cache": cache_info,
        "phase_seconds": clock.seconds,
        # The levers as they ran: packing, sharing and the chunked head switch off for a model that
        # fails their check at start (SequenceLogProbs.verify).
        "speed_levers": {
            "token_budget": token_budget,
            "packing": packing,
            "prefix_sharing": share_prefixes,
            "mismatched_merge_ratio": round(merge_ratio, 3),  # 0: every mismatched sequence in the no-grad pass
            "logits_chunk_size": policy.logits_chunk_size,
            "checkpointing": checkpointing,
        },
    }
    if plan is not None:
        summary["memory_plan"] = plan.to_dict()
    if profiler.summary is not None:
        summary["profile"] = profiler.summary
    summary.update({key: last_logged.get(key) for key in ("loss", "z0", "reward_accuracy", "reward_margin")})
    is_main = accelerator.is_main_process
    # The wrappers first, then the process group (see distributed.py): a rank could otherwise hang at exit.
    del policy_ddp, policy_for_no_grad, optimizer, state_dict, reference
    kto_distributed.shut_down(accelerator)
    # Under `accelerate launch` only the main process reports (one JSON line for the whole run).
    return summary if is_main else None


def _first_step_of_epoch(steps, epoch) -> int:
    return next(index for index, (step_epoch, _) in enumerate(steps) if step_epoch == epoch)


def _steps_in_epoch(steps, epoch) -> int:
    return sum(1 for step_epoch, _ in steps if step_epoch == epoch)


_SUMMED = (
    "loss_sum",
    "microbatches",
    "z0_sum",
    "z0_raw_sum",
    "desirable_reward_sum",
    "desirable_count",
    "undesirable_reward_sum",
    "undesirable_count",
    "correct_count",
)


def _new_window(device) -> dict:
    window = {name: torch.zeros((), device=device) for name in _SUMMED}
    window.update(grad_norm=torch.zeros((), device=device), steps=0, examples=0, tokens=0)
    return window


def _accumulate(window: dict, loss: torch.Tensor, stats: dict) -> None:
    # Device-side additions only: no host sync until the window is logged.
    window["loss_sum"] += loss.detach().float()
    window["microbatches"] += 1
    window["z0_sum"] += stats["z0"].float()
    window["z0_raw_sum"] += stats["z0_raw"].float()
    for name in (
        "desirable_reward_sum",
        "desirable_count",
        "undesirable_reward_sum",
        "undesirable_count",
        "correct_count",
    ):
        window[name] += stats[name].float()


def _merge(window: dict, step_window: dict) -> None:
    """Add one (finite) optimizer step's statistics to the logging window."""
    for name in _SUMMED + ("grad_norm",):
        window[name] += step_window[name]
    for name in ("steps", "examples", "tokens"):
        window[name] += step_window[name]


def _reduce_window(window: dict, accelerator) -> dict:
    local = torch.stack([window[name] for name in _SUMMED] + [window["grad_norm"]])
    if accelerator.num_processes > 1:
        local = accelerator.reduce(local, reduction="sum")
    values = dict(zip(_SUMMED + ("grad_norm",), local.tolist()))
    processes = accelerator.num_processes
    if not window["steps"]:  # every step of the window was skipped (non-finite)
        return {
            name: None
            for name in (
                "loss",
                "z0",
                "z0_raw",
                "reward_desirable",
                "reward_undesirable",
                "reward_margin",
                "reward_accuracy",
                "grad_norm",
            )
        } | {"examples": 0, "tokens": 0}
    n_desirable, n_undesirable = values["desirable_count"], values["undesirable_count"]
    reward_desirable = values["desirable_reward_sum"] / n_desirable if n_desirable else None
    reward_undesirable = values["undesirable_reward_sum"] / n_undesirable if n_undesirable else None
    margin = (
        reward_desirable - reward_undesirable
        if reward_desirable is not None and reward_undesirable is not None
        else None
    )
    return {
        "loss": values["loss_sum"] / values["microbatches"],
        "z0": values["z0_sum"] / values["microbatches"],
        "z0_raw": values["z0_raw_sum"] / values["microbatches"],
        "reward_desirable": reward_desirable,
        "reward_undesirable": reward_undesirable,
        "reward_margin": margin,
        "reward_accuracy": values["correct_count"] / max(1.0, n_desirable + n_undesirable),
        # The norm is identical on every process after the all-reduce of gradients.
        "grad_norm": values["grad_norm"] / processes / window["steps"],
        "examples": window["examples"] * processes,
        "tokens": window["tokens"] * processes,
    }
