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


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside a peft wrapper (LoRA layers stay injected)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


class SequenceLogProbs(nn.Module):
    """Wraps a causal LM; forward returns, per sequence, the sum of log π(token) over completion
    tokens and the number of completion tokens.

    Only completion positions go through the LM head (prompt positions never need vocabulary
    logits), which saves most of the head's time and memory for long prompts. This is an
    nn.Module so that DistributedDataParallel wraps it and gradient sync works.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, completion_mask: torch.Tensor,
                per_token: bool = False):
        causal_lm = _causal_lm(self.model)
        backbone = getattr(causal_lm, causal_lm.base_model_prefix)
        # attention_mask may be None when the batch has no padding (decided on the host by the
        # collator, so no device sync here): attention then takes its fastest path.
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        # Position t predicts token t+1; keep the positions whose next token is a completion token.
        predicts_completion = completion_mask[:, 1:]
        selected_hidden = hidden[:, :-1][predicts_completion]
        targets = input_ids[:, 1:][predicts_completion]
        logits = causal_lm.get_output_embeddings()(selected_hidden).float()
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        sequence_index = torch.arange(input_ids.shape[0], device=input_ids.device)
        sequence_index = sequence_index.unsqueeze(1).expand_as(predicts_completion)[predicts_completion]
        logps = torch.zeros(input_ids.shape[0], device=input_ids.device, dtype=token_logps.dtype)
        logps = logps.index_add(0, sequence_index, token_logps)
        token_counts = predicts_completion.sum(-1)
        if per_token:  # also every completion token's log-prob, sequence after sequence (offline PPO)
            return logps, token_counts, token_logps
        return logps, token_counts
