"""The training loop: read top to bottom.

    train(config)
      1. check the data and options (before anything is written, so a failure changes nothing)
      2. load tokenizer and policy; LoRA wraps it; pick the reference (precomputed / copy / adapter-off)
      3. plan every optimizer step's microbatches up front (seeded, reshuffled each epoch)
      4. precompute reference log-probs once, cached next to the data (keyed by model + data hash)
      5. AdamW + linear warmup/decay; resume from the newest checkpoint if asked
      6. loop: per microbatch, no-grad work first (as few forwards as possible), then the
         policy forward with grad and backward; clip, step, log, checkpoint
      7. write final/ atomically

Runs on one process, or on N under `accelerate launch` (each process takes its slice of every
global microbatch; z0 is all-reduced inside loss.reference_point).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import data as kto_data
from . import distributed as kto_distributed
from . import loss as kto_loss
from .balancing import balance_weights
from .modeling import SequenceLogProbs, is_peft_dir, load_causal_lm, load_tokenizer, model_fingerprint


class TrainingError(RuntimeError):
    """A problem with the options or the environment, reported as one clear message."""


@dataclass
class TrainConfig:
    model: str
    data: str
    out: str
    loss: str = "kto"  # kto | no_z0 | concave | risk_neutral | reference_free | sft | dpo
    beta: float = 0.1
    learning_rate: float = 5e-6
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 4  # 8 × 4 = effective batch 32, the paper's default
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 stops after this many optimizer steps
    max_length: int = 1024
    max_prompt_length: int | None = None  # keeps the prompt's last tokens (data.tokenize_example)
    desirable_weight: float | str = "auto"  # a number or "auto" (balancing.balance_weights)
    undesirable_weight: float | str = "auto"
    target_ratio: float = 4 / 3
    balance_mode: str = "auto"  # auto | downside_first (used when weights are "auto")
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    reference: str = "precompute"  # precompute | copy (full FT: frozen copy; LoRA: adapter disabled)
    z0_zero: bool = False  # SPEC: z0 = 0 after SFT on the same data, saves the mismatched pass
    gradient_checkpointing: bool = False
    bf16: str = "auto"  # auto (on when CUDA is available) | yes | no
    logging_steps: int = 1
    save_steps: int = 0  # 0: no intermediate checkpoints
    resume: bool = False
    progress: bool = True  # the tqdm bar on stderr
    expected_world_size: int = 0  # > 0: refuse to train unless the launcher started exactly this many processes
    # TRL KTOTrainer's data handling, so a run matches TRL's step for step: file order (no shuffle,
    # no length buckets, last partial microbatch kept), mismatched pairs (x_i, y_(i-1) mod m), its
    # truncation (keep the start; drop rows whose prompt fills max_length), warmup and fused AdamW.
    trl_compat: bool = False

    # Fields that change the result: a resumed run must match the original on these.
    RESULT_FIELDS = ("model", "data", "loss", "beta", "learning_rate", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "num_train_epochs", "max_steps", "max_length", "max_prompt_length",
                     "desirable_weight", "undesirable_weight", "target_ratio", "balance_mode",
                     "warmup_ratio", "weight_decay", "max_grad_norm", "seed", "lora", "lora_r",
                     "lora_alpha", "lora_dropout", "reference", "z0_zero", "trl_compat")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _parse_weight(value: float | str, name: str) -> float | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise TrainingError(f"--{name} must be a number or 'auto', got {value!r}") from None
    if not weight > 0:
        raise TrainingError(f"--{name} must be positive, got {weight}")
    return weight


def resolve_class_weights(config: TrainConfig, n_desirable: int, n_undesirable: int) -> dict:
    """λ_D, λ_U from the options: explicit numbers win; 'auto' applies the SPEC §1 rule."""
    desirable = _parse_weight(config.desirable_weight, "desirable-weight")
    undesirable = _parse_weight(config.undesirable_weight, "undesirable-weight")
    if desirable is not None and undesirable is not None:
        weights = balance_weights(n_desirable, n_undesirable, manual=(desirable, undesirable))
        return weights.to_dict()
    try:
        weights = balance_weights(n_desirable, n_undesirable, target_ratio=config.target_ratio,
                                  mode=config.balance_mode)
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


def _tensors(examples: list[kto_data.TokenizedExample], keys: list[tuple[int, int]], config: TrainConfig,
             pad_token_id: int) -> dict[str, Any]:
    """Collate sequences named by (prompt example, completion example) keys."""
    batch = kto_data.collate([(examples[i].prompt_ids, examples[j].completion_ids) for i, j in keys],
                             config.max_length, pad_token_id,
                             truncation="keep_start" if config.trl_compat else "keep_completion")
    if bool(batch["attention_mask"].all()):
        batch["attention_mask"] = None  # no padding: decided here on the host, no device sync later
    return batch


def microbatch_keys(local_indices: list[int], config: TrainConfig) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The (prompt, completion) example indices of one microbatch: matched (x_i, y_i) and, for the
    losses with a reference point, mismatched (x_i, y_{(i+1) mod m}). Used both to build the
    microbatch and to plan which reference log-probs to precompute, so the two always agree."""
    if config.loss == "dpo":
        # Examples 2k / 2k+1 are pair k's chosen / rejected completions (see prepare_examples).
        return [(2 * k, 2 * k) for k in local_indices] + [(2 * k + 1, 2 * k + 1) for k in local_indices], []
    matched = [(i, i) for i in local_indices]
    if config.loss in ("kto", "concave", "risk_neutral", "reference_free") and not config.z0_zero:
        partners = (kto_data.trl_mismatched_partners(len(local_indices)) if config.trl_compat
                    else kto_data.mismatched_partners(len(local_indices)))
        return matched, [(local_indices[i], local_indices[j]) for i, j in enumerate(partners)]
    return matched, []


def build_microbatch(examples, local_indices: list[int], config: TrainConfig, pad_token_id: int,
                     reference_cache: dict | None) -> dict[str, Any]:
    """Everything one microbatch needs. For KTO: the matched sequences (x_i, y_i), the mismatched
    ones (x_i, y_{(i+1) mod m}) built from this very microbatch, and cached reference log-probs."""
    matched_keys, mismatched_keys = microbatch_keys(local_indices, config)
    batch = {
        "matched": _tensors(examples, matched_keys, config, pad_token_id),
        "mismatched": _tensors(examples, mismatched_keys, config, pad_token_id) if mismatched_keys else None,
        "is_desirable": torch.tensor([examples[i].label for i, _ in matched_keys]),
        "n_examples": len(matched_keys),
        "n_tokens": sum(min(len(examples[i].prompt_ids) + len(examples[j].completion_ids), config.max_length)
                        for i, j in matched_keys),
    }
    if reference_cache is not None:
        batch["reference_matched"] = torch.tensor([reference_cache[key] for key in matched_keys])
        if mismatched_keys:
            batch["reference_mismatched"] = torch.tensor([reference_cache[key] for key in mismatched_keys])
    return batch


def _to_device(tensors: dict | None, device) -> dict | None:
    if tensors is None:
        return None
    return {key: (value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value)
            for key, value in tensors.items()}


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

    @torch.no_grad()
    def logps(self, batch: dict) -> torch.Tensor:
        context = self.module.model.disable_adapter() if self.disable_adapter else contextlib.nullcontext()
        with context:
            return self.module(**batch)[0]


def reference_cache_path(data_path: str, model_hash: str, data_hash: str, max_length: int) -> Path:
    data_path = Path(data_path)
    return data_path.parent / f"{data_path.name}.prospect-ref" / f"{model_hash[:20]}-{data_hash[:20]}-L{max_length}.pt"


def precompute_reference_logps(reference: Reference, examples, keys: set[tuple[int, int]], config: TrainConfig,
                               pad_token_id: int, device, autocast, batch_size: int) -> dict:
    """log π_ref for every (prompt example, completion example) key, in length-sorted batches."""
    ordered = sorted(keys, key=lambda key: len(examples[key[0]].prompt_ids) + len(examples[key[1]].completion_ids))
    values: dict[tuple[int, int], float] = {}
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start: start + batch_size]
        batch = _to_device(_tensors(examples, chunk, config, pad_token_id), device)
        with autocast():
            logps = reference.logps(batch).float().cpu().tolist()
        values.update(zip(chunk, logps))
    return values


def load_or_precompute_reference(reference, examples, keys, config, pad_token_id, accelerator, batch_size) -> tuple[dict, dict]:
    """Reference log-probs from the cache next to the data, computing (and adding) what is missing.
    The main process computes and writes; the others read after it."""
    model_hash = model_fingerprint(config.model)
    data_hash = kto_data.file_sha256(config.data)
    path = reference_cache_path(config.data, model_hash, data_hash, config.max_length)
    info = {"path": str(path), "hits": 0, "computed": 0}
    with accelerator.main_process_first():
        cached: dict = {}
        if path.is_file():
            stored = torch.load(path, weights_only=False)
            if stored.get("model_hash") == model_hash and stored.get("data_hash") == data_hash:
                cached = stored["logps"]
        missing = {key for key in keys if key not in cached}
        info["hits"] = len(keys) - len(missing)
        if missing and accelerator.is_main_process:
            cached.update(precompute_reference_logps(reference, examples, missing, config, pad_token_id,
                                                     accelerator.device, accelerator.autocast, batch_size))
            info["computed"] = len(missing)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".tmp-{os.getpid()}")
            torch.save({"model_hash": model_hash, "data_hash": data_hash, "max_length": config.max_length,
                        "logps": cached}, temporary)
            os.replace(temporary, path)  # atomic: a reader never sees half a cache
    return cached, info


# ----------------------------------------------------------------------------------------------
# One microbatch: loss and statistics


def microbatch_loss(policy, policy_unwrapped: SequenceLogProbs, reference: Reference | None, batch: dict,
                    config: TrainConfig, class_weights: dict, pad_token_id: int) -> tuple[torch.Tensor, dict]:
    """The loss of one microbatch (already on the device) and its detached statistics.

    No-grad work comes first and in as few forward calls as possible: the reference scores matched
    and mismatched sequences in one call; the policy scores the mismatched ones in another (with
    precomputed reference log-probs, that is the only no-grad call). Then one forward with grad.
    """
    matched, mismatched = batch["matched"], batch["mismatched"]
    n_matched = matched["input_ids"].shape[0]
    zero = torch.zeros((), device=matched["input_ids"].device)

    reference_matched = batch.get("reference_matched")
    reference_mismatched = batch.get("reference_mismatched")
    with torch.no_grad():
        needs_reference = config.loss not in ("sft", "reference_free")
        if needs_reference and reference_matched is None:
            sequences = matched if mismatched is None else _concat_sequences(matched, mismatched, pad_token_id)
            reference_logps = reference.logps(sequences)
            reference_matched = reference_logps[:n_matched]
            reference_mismatched = reference_logps[n_matched:] if mismatched is not None else None
        mismatched_policy = policy_unwrapped(**mismatched)[0] if mismatched is not None else None

    policy_logps, token_counts = policy(**matched)

    if config.loss == "sft":
        loss = kto_loss.sft_loss(policy_logps, token_counts)
        stats = {"z0": zero, "z0_raw": zero}
        stats.update(kto_loss.reward_statistics(policy_logps.detach(), batch["is_desirable"], zero))
        return loss, stats
    if config.loss == "dpo":
        half = n_matched // 2
        loss, stats = kto_loss.dpo_loss(policy_logps[:half], policy_logps[half:],
                                        reference_matched[:half], reference_matched[half:], config.beta)
        stats.update(z0=zero, z0_raw=zero)
        return loss, stats

    if config.loss == "reference_free":
        # π_ref uniform: its log-probs are a constant that cancels between r and z0 (paper §4.4),
        # so r = log π_θ(y|x) and z0 = mean log π_θ(y_j|x_i), unclamped (without the dropped
        # constant it is no longer a KL, so its sign means nothing).
        reference_matched = torch.zeros_like(policy_logps)
        reference_mismatched = torch.zeros_like(mismatched_policy) if mismatched_policy is not None else None
    if mismatched is None:  # no_z0, or --z0-zero
        z0 = z0_raw = zero
    else:
        z0, z0_raw = kto_loss.reference_point(mismatched_policy, reference_mismatched,
                                              clamp=config.loss != "reference_free")
    value = config.loss if config.loss in ("concave", "risk_neutral") else "kto"
    loss, stats = kto_loss.kto_loss(policy_logps, reference_matched, batch["is_desirable"], z0, config.beta,
                                    class_weights["desirable_weight"], class_weights["undesirable_weight"], value)
    stats.update(z0=z0, z0_raw=z0_raw)
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Data: read, tokenize, plan


def prepare_examples(config: TrainConfig, tokenizer) -> tuple[list[kto_data.TokenizedExample], int, int]:
    """Tokenized units and the (n_desirable, n_undesirable) counts. For DPO the units are pairs
    flattened as [chosen_0, rejected_0, chosen_1, ...]."""
    if config.loss == "dpo":
        pairs = kto_data.read_preference_pairs(config.data)
        flat = []
        for pair in pairs:
            flat.append(kto_data.KTOExample(pair.prompt, pair.chosen, True, pair.line, pair.chosen_messages))
            flat.append(kto_data.KTOExample(pair.prompt, pair.rejected, False, pair.line, pair.rejected_messages))
        return kto_data.tokenize_examples(tokenizer, flat, config.max_prompt_length), len(pairs), len(pairs)
    examples = kto_data.read_kto_jsonl(config.data)
    if config.loss == "sft":
        # The SFT baseline learns from the desirable completions only.
        examples = [example for example in examples if example.label]
        if not examples:
            raise TrainingError(f"{config.data}: the sft baseline trains on desirable examples and there are none")
    tokenized = kto_data.tokenize_examples(tokenizer, examples, config.max_prompt_length)
    if config.trl_compat:
        tokenized = [example for example in tokenized if kto_data.fits_trl_max_length(example, config.max_length)]
    n_desirable = sum(example.label for example in tokenized)
    return tokenized, n_desirable, len(tokenized) - n_desirable


def plan_steps(examples, config: TrainConfig, world_size: int) -> list[tuple[int, list[list[int]]]]:
    """Every optimizer step as (epoch, its global microbatches). Deterministic in the seed, so a
    resumed run replays exactly the same order."""
    micro = config.per_device_train_batch_size * world_size
    if config.trl_compat:
        return kto_data.plan_trl_steps(len(examples), config.per_device_train_batch_size, world_size,
                                       config.gradient_accumulation_steps, config.num_train_epochs, config.max_steps)
    if config.loss == "dpo":
        lengths = [max(kto_data.sequence_length(examples[2 * k], config.max_length),
                       kto_data.sequence_length(examples[2 * k + 1], config.max_length))
                   for k in range(len(examples) // 2)]
    else:
        lengths = [kto_data.sequence_length(example, config.max_length) for example in examples]
    steps = []
    for epoch in range(math.ceil(config.num_train_epochs)):
        microbatches = kto_data.plan_epoch(lengths, micro, config.seed, epoch)
        if epoch + 1 > config.num_train_epochs:  # a fractional last epoch
            microbatches = microbatches[: int(len(microbatches) * (config.num_train_epochs - epoch))]
        for start in range(0, len(microbatches), config.gradient_accumulation_steps):
            steps.append((epoch, microbatches[start: start + config.gradient_accumulation_steps]))
    if config.max_steps > 0:
        steps = steps[: config.max_steps]
    return steps


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        state["numpy"] = numpy.random.get_state()
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

        numpy.random.set_state(state["numpy"])


def save_checkpoint(out: Path, step: int, epoch: int, model, optimizer, scheduler, accelerator, tokenizer) -> Path:
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
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": epoch}))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


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
        raise TrainingError(f"{checkpoint}: weights do not match the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")


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
    if config.loss not in kto_loss.LOSS_TYPES:
        raise TrainingError(f"--loss must be one of {', '.join(kto_loss.LOSS_TYPES)}, got {config.loss!r}")
    if config.trl_compat and config.loss != "kto":
        raise TrainingError("--trl-compat reproduces TRL's KTOTrainer, which trains --loss kto; "
                            f"got --loss {config.loss}")
    if config.max_prompt_length is not None and config.max_prompt_length < 1:
        raise TrainingError(f"--max-prompt-length must be at least 1, got {config.max_prompt_length}")
    if config.reference not in ("precompute", "copy"):
        raise TrainingError(f"--reference must be 'precompute' or 'copy', got {config.reference!r}")
    if config.loss in kto_loss.KTO_VALUES:
        try:
            kto_data.mismatched_partners(config.per_device_train_batch_size)
        except ValueError as error:
            raise TrainingError(str(error)) from None
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
        if getattr(config, name) < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.max_length < 2:
        raise TrainingError("--max-length must be at least 2")
    if not config.num_train_epochs > 0:
        raise TrainingError(f"--num-train-epochs must be positive, got {config.num_train_epochs}")
    if config.beta <= 0 or config.learning_rate <= 0:
        raise TrainingError("--beta and --learning-rate must be positive")
    if not Path(config.model).exists():
        raise TrainingError(f"--model {config.model}: no such directory (no model hub is used; give a local "
                            "save_pretrained directory)")
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


def train(config: TrainConfig) -> dict | None:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # 1. Options and data, before anything is written.
    check_config(config)
    out = Path(config.out)
    tokenizer = load_tokenizer(config.model)
    examples, n_desirable, n_undesirable = prepare_examples(config, tokenizer)
    class_weights = resolve_class_weights(config, n_desirable, n_undesirable)

    use_bf16 = config.bf16 == "yes" or (config.bf16 == "auto" and torch.cuda.is_available())
    # cpu=True without CUDA: under `accelerate launch --num_processes N` this selects gloo
    # multi-CPU data parallelism instead of N independent single processes.
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no", cpu=not torch.cuda.is_available())
    problem = (kto_distributed.world_size_problem(accelerator.num_processes, config.expected_world_size)
               or kto_distributed.unsupported_backend_problem(accelerator))
    if problem:
        accelerator.end_training()
        raise TrainingError(problem)
    set_seed(config.seed)  # CPU kernels are deterministic for a fixed thread count
    steps = plan_steps(examples, config, accelerator.num_processes)
    if not steps:
        raise TrainingError(f"{config.data}: {len(examples)} examples do not fill one microbatch of "
                            f"{config.per_device_train_batch_size} × {accelerator.num_processes} processes")

    # 2. Policy, LoRA, reference.
    base_model_path = str(Path(config.model).resolve())
    model = load_causal_lm(base_model_path)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if config.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    policy = SequenceLogProbs(model).to(accelerator.device)
    policy.verify()  # refuses an architecture whose log-probs the engine cannot reproduce exactly
    needs_reference = config.loss not in ("sft", "reference_free")
    reference = None
    if needs_reference and config.lora:
        reference = Reference(policy, disable_adapter=True)  # the base itself: no second copy
    elif needs_reference and config.reference == "precompute":
        # Before the first update the policy *is* the reference: precompute with it, no copy.
        reference = Reference(policy, disable_adapter=False)
    elif needs_reference:
        # Full fine-tuning with a live reference: a frozen copy of the initial weights.
        reference = Reference(copy.deepcopy(policy).requires_grad_(False).eval(), disable_adapter=False)

    # 3-4. Reference log-probs precomputed for every sequence the planned steps will use.
    reference_cache, cache_info = None, None
    if needs_reference and config.reference == "precompute":
        keys: set[tuple[int, int]] = set()
        for _, microbatches in steps:
            for global_microbatch in microbatches:
                for rank in range(accelerator.num_processes):
                    local = global_microbatch[rank * config.per_device_train_batch_size:
                                              (rank + 1) * config.per_device_train_batch_size]
                    matched_keys, mismatched_keys = microbatch_keys(local, config)
                    keys.update(matched_keys + mismatched_keys)
        reference_cache, cache_info = load_or_precompute_reference(
            reference, examples, keys, config, tokenizer.pad_token_id, accelerator,
            batch_size=4 * config.per_device_train_batch_size)
        reference = None  # training reads the cache from here on

    # 5. Optimizer, schedule, resume.
    trainable = [parameter for parameter in policy.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=True if config.trl_compat else None)  # TRL's default optim: fused AdamW
    warmup_steps = math.ceil(config.warmup_ratio * len(steps))

    def learning_rate_factor(step: int) -> float:
        if step < warmup_steps:
            # TRL (transformers' linear schedule) starts its warmup at 0.
            return step / warmup_steps if config.trl_compat else (step + 1) / (warmup_steps + 1)
        return max(0.0, (len(steps) - step) / max(1, len(steps) - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    policy_ddp, optimizer = accelerator.prepare(policy, optimizer)
    # Sharded (FSDP): only the wrapped model's forward gathers the parameters, so every pass goes through it.
    policy_for_no_grad = policy_ddp if kto_distributed.is_sharded(accelerator) else policy
    if reference is not None and reference.module is policy:
        reference.module = policy_for_no_grad

    start_step = 0
    if config.resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None and kto_distributed.is_sharded(accelerator):
            accelerator.load_state(str(checkpoint / kto_distributed.SHARDED_STATE_DIR))  # model + optimizer shards
        if checkpoint is not None and not kto_distributed.is_sharded(accelerator):
            load_checkpoint_weights(policy.model, checkpoint)
            optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
        if checkpoint is not None:
            scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
            _set_rng_state(torch.load(checkpoint / f"rng-{accelerator.process_index}.pt", weights_only=False))
            start_step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if config.resume:
            truncate_metrics(metrics_path, start_step)
        write_json_atomic(out / "config.json", {
            "config": config.to_dict(), "class_weights": class_weights, "n_examples": len(examples),
            "n_desirable": n_desirable, "n_undesirable": n_undesirable, "total_steps": len(steps),
            "world_size": accelerator.num_processes, "bf16": use_bf16, "reference_cache": cache_info,
            "base_model": base_model_path, "torch": torch.__version__,
        })
    accelerator.wait_for_everyone()

    # 6. The loop.
    from tqdm.auto import tqdm

    progress = tqdm(total=len(steps), initial=start_step, disable=not (config.progress and accelerator.is_main_process),
                    desc=f"{config.loss} training", unit="step", dynamic_ncols=True)
    metrics_file = open(metrics_path, "a", encoding="utf-8") if accelerator.is_main_process else None
    policy_ddp.train()
    window = _new_window(accelerator.device)
    last_logged: dict = {}
    train_start = time.perf_counter()
    window_start = time.perf_counter()
    trained_examples = trained_tokens = 0
    rank, per_device = accelerator.process_index, config.per_device_train_batch_size
    for step in range(start_step, len(steps)):
        epoch, microbatches = steps[step]
        for index, global_microbatch in enumerate(microbatches):
            local = global_microbatch[rank * per_device:(rank + 1) * per_device]
            batch = build_microbatch(examples, local, config, tokenizer.pad_token_id, reference_cache)
            device_batch = {key: (_to_device(value, accelerator.device) if isinstance(value, dict) or value is None
                                  else value.to(accelerator.device) if isinstance(value, torch.Tensor) else value)
                            for key, value in batch.items()}
            is_last = index == len(microbatches) - 1
            # Gradients are averaged across processes only on the last microbatch of the step.
            sync_context = contextlib.nullcontext() if is_last else accelerator.no_sync(policy_ddp)
            with sync_context, accelerator.autocast():
                loss, stats = microbatch_loss(policy_ddp, policy_for_no_grad, reference, device_batch, config, class_weights,
                                              tokenizer.pad_token_id)
                accelerator.backward(loss / len(microbatches))
            _accumulate(window, loss, stats)
            window["examples"] += batch["n_examples"]
            window["tokens"] += batch["n_tokens"]
        grad_norm = accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window["grad_norm"] = window["grad_norm"] + grad_norm.detach().float()
        window["steps"] += 1
        completed = step + 1
        progress.update(1)

        if completed % config.logging_steps == 0 or completed == len(steps):
            # One host sync per logged step: all statistics travel in one tensor.
            record = _reduce_window(window, accelerator)
            elapsed = time.perf_counter() - window_start
            record.update(step=completed, epoch=round(epoch + (completed - _first_step_of_epoch(steps, epoch)) /
                                                      _steps_in_epoch(steps, epoch), 4),
                          learning_rate=scheduler.get_last_lr()[0],
                          examples_per_s=record.pop("examples") / elapsed, tokens_per_s=record.pop("tokens") / elapsed)
            trained_examples += window["examples"] * accelerator.num_processes
            trained_tokens += window["tokens"] * accelerator.num_processes
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()  # the web app tails this file live
            progress.set_postfix(loss=f"{record['loss']:.4f}", z0=f"{record['z0']:.3f}")
            last_logged = record
            window = _new_window(accelerator.device)
            window_start = time.perf_counter()
        if config.save_steps > 0 and completed % config.save_steps == 0 and completed < len(steps):
            save_checkpoint(out, completed, epoch, accelerator.unwrap_model(policy_ddp).model, optimizer, scheduler,
                            accelerator, tokenizer)
    progress.close()
    train_runtime = time.perf_counter() - train_start
    if metrics_file is not None:
        metrics_file.close()

    # 7. final/: written under a temporary name, then renamed — never half a final model.
    final = out / "final"
    state_dict = kto_distributed.full_state_dict(accelerator, policy_ddp)  # every rank: FSDP gathers the shards
    if accelerator.is_main_process:
        temporary = out / f".final.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        accelerator.unwrap_model(policy_ddp).model.save_pretrained(temporary, state_dict=state_dict)
        tokenizer.save_pretrained(temporary)
        write_json_atomic(temporary / "prospect_training.json", {
            "base_model": base_model_path, "loss": config.loss, "lora": config.lora, "steps": len(steps),
            "class_weights": class_weights, "data_sha256": kto_data.file_sha256(config.data)})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    summary = {
        "out": str(out), "final": str(final), "steps": len(steps), "resumed_from_step": start_step,
        "loss_type": config.loss, "lora": config.lora,
        "desirable_weight": class_weights["desirable_weight"], "undesirable_weight": class_weights["undesirable_weight"],
        "train_runtime_s": round(train_runtime, 3),
        "examples_per_s": trained_examples / train_runtime if train_runtime > 0 else None,
        "tokens_per_s": trained_tokens / train_runtime if train_runtime > 0 else None,
        "reference": config.reference if needs_reference else "none", "reference_cache": cache_info,
    }
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


_SUMMED = ("loss_sum", "microbatches", "z0_sum", "z0_raw_sum", "desirable_reward_sum", "desirable_count",
           "undesirable_reward_sum", "undesirable_count", "correct_count")


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
    for name in ("desirable_reward_sum", "desirable_count", "undesirable_reward_sum", "undesirable_count",
                 "correct_count"):
        window[name] += stats[name].float()


def _reduce_window(window: dict, accelerator) -> dict:
    local = torch.stack([window[name] for name in _SUMMED] + [window["grad_norm"]])
    if accelerator.num_processes > 1:
        local = accelerator.reduce(local, reduction="sum")
    values = dict(zip(_SUMMED + ("grad_norm",), local.tolist()))
    processes = accelerator.num_processes
    n_desirable, n_undesirable = values["desirable_count"], values["undesirable_count"]
    reward_desirable = values["desirable_reward_sum"] / n_desirable if n_desirable else None
    reward_undesirable = values["undesirable_reward_sum"] / n_undesirable if n_undesirable else None
    margin = (reward_desirable - reward_undesirable
              if reward_desirable is not None and reward_undesirable is not None else None)
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
