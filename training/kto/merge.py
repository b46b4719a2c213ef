"""Folding a LoRA adapter into its base model, so that the next run can start from full weights."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> str:
    """Write base + adapter as one save_pretrained directory at `out_dir` (which must not exist).

    The base is given explicitly rather than read from the adapter's config: the registry knows
    which full weights an adapter was trained on, wherever they live now. The tokenizer is the
    adapter's when it saved one, else the base's. Written next to `out_dir` and renamed into
    place, so a crash never leaves half a model.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    if out.exists():
        raise ValueError(f"--out {out} already exists")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    merged = model.merge_and_unload()
    has_tokenizer = any((Path(adapter_dir) / name).exists() for name in TOKENIZER_FILES)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer else base_dir)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        merged.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        os.replace(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return str(out)
