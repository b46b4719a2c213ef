"""Loading models and computing per-sequence completion log-probabilities efficiently."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn as nn


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
    This is an nn.Module so that DistributedDataParallel wraps it and gradient sync works.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def token_logps(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, completion_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per completion token: log π(token | prefix) (flat, row-major over the batch), the row each
        belongs to, and the boolean (batch, seq-1) mask of positions t whose next token t+1 is scored."""
        # Position t predicts token t+1; keep the positions whose next token is a completion token.
        predicts_completion = completion_mask[:, 1:].bool()
        keep = torch.zeros_like(completion_mask, dtype=torch.bool)
        keep[:, :-1] = predicts_completion
        # attention_mask may be None when the batch has no padding (decided on the host by the
        # collator, so no device sync here): attention then takes its fastest path.
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep
        ).logits
        targets = input_ids[:, 1:][predicts_completion]
        if logits.dim() != 2 or logits.shape[0] != targets.shape[0]:
            raise UnsupportedModelError(
                f"{_model_type(self.model)}: its forward() ignores a boolean logits_to_keep mask (logits of shape "
                f"{tuple(logits.shape)} for {targets.shape[0]} kept positions), so the engine cannot compute "
                "completion log-probabilities the way the model does; this architecture is not supported"
            )
        token_logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        rows = rows.unsqueeze(1).expand_as(predicts_completion)[predicts_completion]
        return token_logps, rows, predicts_completion

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        completion_mask: torch.Tensor,
        per_token: bool = False,
    ):
        token_logps, rows, predicts_completion = self.token_logps(input_ids, attention_mask, completion_mask)
        logps = torch.zeros(input_ids.shape[0], device=input_ids.device, dtype=token_logps.dtype)
        logps = logps.index_add(0, rows, token_logps)
        token_counts = predicts_completion.sum(-1)
        if per_token:  # also every completion token's log-prob, sequence after sequence (offline PPO)
            return logps, token_counts, token_logps
        return logps, token_counts

    @torch.no_grad()
    def verify(self, tolerance: float = 1e-4) -> None:
        """Refuse, with a clear message, a model whose engine log-probs differ from log_softmax of its
        own forward() logits. Two short probe sequences (one right-padded), fp32, eval mode (no
        dropout); a few milliseconds, run once at start."""
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
                engine, _, predicts = self.token_logps(input_ids, attention_mask, completion_mask)
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        finally:
            self.model.train(was_training)
        reference = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        difference = (engine - reference[predicts]).abs().max().item()
        if not difference <= tolerance * (1 + reference[predicts].abs().max().item()):
            raise UnsupportedModelError(
                f"{_model_type(self.model)}: completion log-probabilities computed on kept positions differ from "
                f"log_softmax of the model's own forward() logits by up to {difference:.3g}; the engine cannot "
                "reproduce this architecture exactly, so it refuses to train or score it"
            )
