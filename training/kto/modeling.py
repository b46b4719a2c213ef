"""Loading models and computing per-sequence completion log-probabilities efficiently."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn

from .defaults import CHECKPOINT_POLICIES


def is_peft_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out everywhere, so any id will do.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32):
    """A full causal LM from a save_pretrained dir; an adapter dir is loaded onto its base."""
    from transformers import AutoModelForCausalLM

    if is_peft_dir(path):
        from peft import PeftModel

        base_path = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype)
        return PeftModel.from_pretrained(base, str(path))
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)


def model_fingerprint(path: str | Path) -> str:
    """sha256 over the weight files and config of a model dir (the reference-cache key)."""
    path = Path(path)
    digest = hashlib.sha256()
    # Weights, config and tokenizer files: all of them decide the reference log-probs.
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    if not files:
        # A hub id or an unusual layout: fall back to the name (weaker, but still keyed).
        digest.update(str(path).encode())
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


class UnsupportedModelError(ValueError):
    """A model whose log-probabilities the engine cannot compute exactly as its own forward() does."""


def _model_type(model: nn.Module) -> str:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return f"{type(base).__name__} (model_type {getattr(config, 'model_type', '?')!r})"


# Architectures whose forward() ends with a plain ``logits = lm_head(hidden)`` (no soft-capping,
# logit scale or scaling after the head): the chunked head may compute their log-probs from the
# decoder's hidden states directly. verify() still checks it against the model's own forward().
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})


class ChunkedTargetLogProbs(torch.autograd.Function):
    """log_softmax(hidden @ weightᵀ + bias)[target] for K positions, computed ``chunk`` positions at
    a time, so the K × vocabulary logits never exist at once (forward or backward).

    Forward keeps only the hidden states and each position's log-sum-exp; backward recomputes one
    chunk's logits, turns them into d log p / d logits = onehot(target) − softmax, and accumulates
    the hidden-state and weight gradients chunk by chunk (Liger Kernel's fused linear losses are the
    design reference). Exact: the same matmul and fp32 log-sum-exp as log_softmax on the full
    logits, in the autocast dtype when one is active (as the model's own head would run)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, dtype):
        count = hidden.shape[0]
        logps = torch.empty(count, device=hidden.device, dtype=torch.float32)
        log_normalisers = torch.empty(count, device=hidden.device, dtype=torch.float32)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, count, chunk):
                end = min(start + chunk, count)
                logits = torch.nn.functional.linear(hidden[start:end].to(dtype), w, b).float()
                normaliser = torch.logsumexp(logits, dim=-1)
                log_normalisers[start:end] = normaliser
                logps[start:end] = logits.gather(-1, targets[start:end, None]).squeeze(-1) - normaliser
        ctx.save_for_backward(hidden, weight, bias, targets, log_normalisers)
        ctx.chunk, ctx.dtype = chunk, dtype
        return logps

    @staticmethod
    def backward(ctx, grad_logps):
        hidden, weight, bias, targets, log_normalisers = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(bias.shape, device=bias.device, dtype=torch.float32) if need_bias else None
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk):
                end = min(start + chunk, hidden.shape[0])
                h = hidden[start:end].to(dtype)
                logits = torch.nn.functional.linear(h, w, b).float()
                upstream = grad_logps[start:end, None].float()
                # d log p(target) / d logits = onehot(target) - softmax(logits)
                grad_logits = torch.exp(logits - log_normalisers[start:end, None]).mul_(-upstream)
                grad_logits.scatter_add_(-1, targets[start:end, None], upstream)
                grad_logits = grad_logits.to(dtype)
                if need_hidden:
                    grad_hidden[start:end] = (grad_logits @ w).to(hidden.dtype)
                if need_weight:
                    grad_weight.addmm_(grad_logits.t().float(), h.float())
                if need_bias:
                    grad_bias += grad_logits.float().sum(0)
        return (
            grad_hidden,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None,
            None,
            None,
        )


# aten ops whose outputs an "elementwise" checkpoint keeps. linear and matmul reach the dispatcher
# as mm/addmm/bmm; each attention backend has its own kernel op. Looked up by name because the
# set differs between torch builds.
_KEPT_OP_NAMES = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "_scaled_mm",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
)


def enable_checkpointing(model: nn.Module, policy: str) -> None:
    """Gradient checkpointing on every decoder layer with ``policy`` (CHECKPOINT_POLICIES)."""
    options = checkpoint_options(policy)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def set_checkpointing(model: nn.Module, policy: str) -> None:
    """``policy`` (CHECKPOINT_POLICIES) or "off", also on a model already wrapped by peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if policy != "off":
        enable_checkpointing(base, policy)
    elif hasattr(base, "activation_checkpointing_disable"):
        base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_disable()


def checkpoint_options(policy: str) -> dict:
    """Keyword arguments for torch.utils.checkpoint (via transformers' gradient_checkpointing_kwargs)."""
    if policy not in CHECKPOINT_POLICIES:
        raise ValueError(f"checkpoint policy {policy!r}: expected one of {', '.join(CHECKPOINT_POLICIES)}")
    options = {"use_reentrant": False}  # the reentrant variant cannot skip the recompute of kept ops
    if policy == "elementwise":
        options["context_fn"] = _elementwise_recompute_contexts
    return options


def _elementwise_recompute_contexts():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    # Called once per checkpointed layer and forward: the policy is built once, not per call.
    return create_selective_checkpoint_contexts(_keep_matmul_outputs())


@functools.cache
def _keep_matmul_outputs():
    from torch.utils.checkpoint import CheckpointPolicy

    kept = frozenset(getattr(torch.ops.aten, name).default for name in _KEPT_OP_NAMES if hasattr(torch.ops.aten, name))

    def policy(context, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in kept else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


# Attention backends that take a custom 4D mask as given: sdpa a boolean one (True: attend), eager
# an additive one. Flash-attention and flex backends build their own masks and are left out.
TREE_MASK_BACKENDS = frozenset({"sdpa", "eager"})


def tree_attention_mask(
    tree_ids: torch.Tensor,
    branch_ids: torch.Tensor,
    backend: str,
    layout: tuple[str, int | None] = ("one", None),
    position_ids: torch.Tensor | None = None,
):
    """The attention mask of rows packed with shared prompts (data.pack with trees), in the form the
    model takes (``layout`` from _mask_layout): a position sees the earlier positions of its own
    tree that are the shared prompt or its own branch, and, under a sliding window, fewer than that
    many positions back, counted in the sequence's own positions as transformers counts them. One
    (rows, 1, width, width) mask, or {"full_attention", "sliding_attention"} masks for a model with
    both layer types. Built on the device from (rows, width) tensors, not shipped from the host."""
    width = tree_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=tree_ids.device).tril()
    same_tree = tree_ids[:, :, None] == tree_ids[:, None, :]
    visible_branch = (branch_ids[:, None, :] == 0) | (branch_ids[:, :, None] == branch_ids[:, None, :])
    allowed = (causal & same_tree & visible_branch).unsqueeze(1)

    def as_backend(mask: torch.Tensor) -> torch.Tensor:
        if backend == "sdpa":
            return mask
        return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)

    kind, window = layout
    if window is None:
        return as_backend(allowed)
    windowed = allowed & ((position_ids[:, :, None] - position_ids[:, None, :]) < window).unsqueeze(1)
    if kind == "by_type":
        return {"full_attention": as_backend(allowed), "sliding_attention": as_backend(windowed)}
    return as_backend(windowed)


def _mask_layout(config) -> tuple[str, int | None] | None:
    """How a model's layers mask attention, for the tree mask to do the same: ("one", window) when
    every layer takes one mask (window None: plain causal; else Mistral-style sliding), ("by_type",
    window) when layers are "full_attention" or "sliding_attention" and the model takes a mask per
    type (Gemma 2/3, Qwen2 with sliding layers), None for any other kind of layer (chunked, linear)."""
    text = config.get_text_config()
    window = getattr(text, "sliding_window", None)
    layer_types = set(getattr(text, "layer_types", None) or ())
    if layer_types:
        if not layer_types <= {"full_attention", "sliding_attention"}:
            return None
        return ("by_type", window) if "sliding_attention" in layer_types else ("one", None)
    if not getattr(text, "use_sliding_window", True):
        window = None
    return ("one", window)


class SequenceLogProbs(nn.Module):
    """Wraps a causal LM; forward returns, per sequence, the sum of log π(token) over completion
    tokens and the number of completion tokens.

    The log-probabilities are log_softmax of the logits that the model's own ``forward()`` returns
    (the ones generation samples from): the forward is called with ``logits_to_keep`` set to a
    boolean mask of the positions that predict a completion token, so only those positions go
    through the LM head (prompt positions never need vocabulary logits, which saves most of the
    head's time and memory for long prompts), and whatever the architecture does after its head
    (Gemma 2/3 final-logit soft-capping, Cohere's logit_scale, Granite's logits_scaling, ...) is
    applied by the architecture's own code. ``verify()`` checks this against a plain forward at start.

    Two exact speed-ups, each checked by ``verify()`` and switched off for a model that fails it:
    - packed inputs (``position_ids`` + ``sequence_ids`` from data.pack): several sequences per row,
      block-diagonal attention built by transformers from the position restarts, no padding;
    - ``logits_chunk_size`` > 0 on a plain-head architecture (PLAIN_HEAD_MODEL_TYPES): the LM head and
      log-softmax run through ChunkedTargetLogProbs on the decoder's hidden states, so kept
      positions × vocabulary logits are never materialised at once.
    A third, for the no-gradient passes: packed rows whose sequences share their prompt's states
    (``tree_ids``/``branch_ids`` from data.pack with trees; ``prefix_sharing_supported``).
    This is an nn.Module so that DistributedDataParallel wraps it and gradient sync works.
    """

    def __init__(self, model: nn.Module, logits_chunk_size: int = 0):
        super().__init__()
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        model_type = getattr(getattr(base, "config", None), "model_type", None)
        self.logits_chunk_size = logits_chunk_size if model_type in PLAIN_HEAD_MODEL_TYPES else 0
        self.packing_supported = True
        self.mask_layout = _mask_layout(base.config) if hasattr(base, "config") else None
        self.prefix_sharing_supported = (
            getattr(getattr(base, "config", None), "_attn_implementation", None) in TREE_MASK_BACKENDS
            and self.mask_layout is not None
        )
        self.mask_logits_to_keep = True  # a per-row boolean logits_to_keep (False: older transformers)

    def _kept_logps(self, input_ids, attention_mask, position_ids, keep, targets) -> torch.Tensor:
        if self.logits_chunk_size > 0:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            hidden = base.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state[keep]
            head = base.get_output_embeddings()
            dtype = (
                torch.get_autocast_dtype(hidden.device.type)
                if torch.is_autocast_enabled(hidden.device.type)
                else hidden.dtype
            )
            return ChunkedTargetLogProbs.apply(hidden, head.weight, head.bias, targets, self.logits_chunk_size, dtype)
        # position_ids only when packed: a model's forward need not take them otherwise.
        extra = {"position_ids": position_ids} if position_ids is not None else {}
        if self.mask_logits_to_keep:
            try:
                logits = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep, **extra
                ).logits
            except IndexError:
                # transformers releases before 5.2x index logits_to_keep as positions shared by every
                # row and reject a per-row mask: from then on, every position's logits, kept here.
                # verify() makes the first call, before any wrapper, so no sharded forward is cut short.
                self.mask_logits_to_keep = False
        if not self.mask_logits_to_keep:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits
            logits = logits[keep]
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise UnsupportedModelError(
                f"{_model_type(self.model)}: its forward() ignores a boolean logits_to_keep mask (logits of shape "
                f"{tuple(logits.shape)} for {targets.shape[0]} kept positions), so the engine cannot compute "
                "completion log-probabilities the way the model does; this architecture is not supported"
            )
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def token_logps(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        completion_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        tree_ids: torch.Tensor | None = None,
        branch_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per completion token: log π(token | prefix) (flat, row-major), the sequence each belongs
        to, and the boolean (rows, width-1) mask of positions t whose next token t+1 is scored.
        Padded rows (sequence_ids None): one sequence per row. Packed rows: sequence_ids per position;
        with shared prompts also tree_ids and branch_ids, which decide the attention mask."""
        if tree_ids is not None:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            attention_mask = tree_attention_mask(
                tree_ids, branch_ids, base.config._attn_implementation, self.mask_layout, position_ids
            )
        # Position t predicts token t+1; keep the positions whose next token is a completion token
        # of the same sequence.
        predicts_completion = completion_mask[:, 1:].bool()
        if sequence_ids is not None:
            predicts_completion = predicts_completion & (sequence_ids[:, 1:] == sequence_ids[:, :-1])
        keep = torch.zeros_like(completion_mask, dtype=torch.bool)
        keep[:, :-1] = predicts_completion
        targets = input_ids[:, 1:][predicts_completion]
        # attention_mask may be None when the batch has no padding (decided on the host by the
        # collator, so no device sync here): attention then takes its fastest path.
        token_logps = self._kept_logps(input_ids, attention_mask, position_ids, keep, targets)
        if sequence_ids is None:
            rows = torch.arange(input_ids.shape[0], device=input_ids.device)
            rows = rows.unsqueeze(1).expand_as(predicts_completion)[predicts_completion]
        else:
            rows = sequence_ids[:, :-1][predicts_completion]
        return token_logps, rows, predicts_completion

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        completion_mask: torch.Tensor,
        per_token: bool = False,
        position_ids: torch.Tensor | None = None,
        sequence_ids: torch.Tensor | None = None,
        n_sequences: int | None = None,
        tree_ids: torch.Tensor | None = None,
        branch_ids: torch.Tensor | None = None,
    ):
        token_logps, rows, predicts_completion = self.token_logps(
            input_ids, attention_mask, completion_mask, position_ids, sequence_ids, tree_ids, branch_ids
        )
        n = input_ids.shape[0] if sequence_ids is None else n_sequences
        logps = torch.zeros(n, device=input_ids.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
        if sequence_ids is None:
            token_counts = predicts_completion.sum(-1)
        else:
            token_counts = torch.bincount(rows, minlength=n)
        if per_token:  # also every completion token's log-prob, sequence after sequence (offline PPO)
            return logps, token_counts, token_logps
        return logps, token_counts

    @torch.no_grad()
    def verify(self, tolerance: float = 1e-4) -> None:
        """Refuse, with a clear message, a model whose engine log-probs differ from log_softmax of its
        own forward() logits. Two short probe sequences (one right-padded), fp32, eval mode (no
        dropout); a few milliseconds, run once at start. The chunked head is switched off (not
        refused) if it alone disagrees, and packing if packed rows disagree with padded ones."""
        config = (self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model).config
        vocab_size = getattr(config.get_text_config(), "vocab_size", None) or 2
        device = next(self.model.parameters()).device
        probe = (torch.arange(16, device=device) * 7919 + 3) % vocab_size
        input_ids = torch.stack([probe, probe.flip(0)])
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 11:] = 0
        completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
        completion_mask[0, 4:] = True
        completion_mask[1, 6:11] = True
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(device_type=device.type, enabled=False):
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                reference = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None])
                reference = reference.squeeze(-1)

                def difference_of_engine() -> tuple[float, torch.Tensor]:
                    engine, _, predicts = self.token_logps(input_ids, attention_mask, completion_mask)
                    return (engine - reference[predicts]).abs().max().item(), reference[predicts]

                difference, expected = difference_of_engine()
                allowed = tolerance * (1 + expected.abs().max().item())
                if not difference <= allowed and self.logits_chunk_size > 0:
                    self.logits_chunk_size = 0  # the decoder/head split is not this model's forward
                    difference, expected = difference_of_engine()
                if not difference <= allowed:
                    raise UnsupportedModelError(
                        f"{_model_type(self.model)}: completion log-probabilities computed on kept positions "
                        f"differ from log_softmax of the model's own forward() logits by up to {difference:.3g}; "
                        "the engine cannot reproduce this architecture exactly, so it refuses to train or score it"
                    )
                # Packed: three sequences, two sharing a row (positions restart), against padded rows.
                from .data import collate, pack, prefix_trees

                probe_list = probe.tolist()
                joined = [(probe_list, 4), (probe_list[::-1][:9], 6), (probe_list[3:10], 2)]
                padded = collate([(ids[:n], ids[n:]) for ids, n in joined], 16, pad_token_id=0)
                packed = pack(joined, pad_token_id=0)
                try:
                    padded_logps, _ = self.forward(**{k: v.to(device) for k, v in padded.items()})
                    packed_logps, _ = self.forward(
                        **{k: (v.to(device) if v is not None else None) for k, v in packed.items()}, n_sequences=3
                    )
                    self.packing_supported = (packed_logps - padded_logps).abs().max().item() <= tolerance * (
                        1 + padded_logps.abs().max().item()
                    )
                except (TypeError, ValueError, RuntimeError):
                    self.packing_supported = False
                # Shared prompts: two sequences on one prompt (one of them the first probe's) and one
                # alone, against the same padded rows.
                if self.packing_supported and self.prefix_sharing_supported:
                    joined.append((probe_list[:4] + probe_list[9:14], 4))
                    padded = collate([(ids[:n], ids[n:]) for ids, n in joined], 16, pad_token_id=0)
                    shared = pack(joined, pad_token_id=0, trees=prefix_trees(joined, width_limit=32))
                    try:
                        padded_logps, _ = self.forward(**{k: v.to(device) for k, v in padded.items()})
                        shared_logps, _ = self.forward(
                            **{k: (v.to(device) if v is not None else None) for k, v in shared.items()},
                            n_sequences=4,
                        )
                        self.prefix_sharing_supported = (
                            shared_logps - padded_logps
                        ).abs().max().item() <= tolerance * (1 + padded_logps.abs().max().item())
                    except (TypeError, ValueError, RuntimeError, AttributeError):
                        self.prefix_sharing_supported = False
                else:
                    self.prefix_sharing_supported = False
        finally:
            self.model.train(was_training)
