"""Sampling completions from a model directory (full weights or a LoRA adapter)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .data import prompt_text
from .modeling import load_causal_lm, load_tokenizer


def _training_record(model_dir: str | Path) -> dict:
    record = Path(model_dir) / "prospect_training.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def prompt_suffix_ids(model_dir: str | Path, tokenizer) -> list[int]:
    """Token ids appended to every prompt of a model: a CSFT-trained model generates after its
    desirable control token (<|good|>), as recorded by the trainer in prospect_training.json."""
    token = _training_record(model_dir).get("prompt_suffix_token")
    return [tokenizer.convert_tokens_to_ids(token)] if token else []


def control_token_ids(model_dir: str | Path, tokenizer) -> list[int]:
    """A CSFT model's control tokens: inputs only, never generated."""
    tokens = _training_record(model_dir).get("control_tokens", {})
    return [tokenizer.convert_tokens_to_ids(token) for token in tokens.values()]


def load_for_generation(model_dir: str | Path):
    tokenizer = load_tokenizer(model_dir)
    # Travels with the tokenizer, so callers holding a (model, tokenizer) pair keep it.
    tokenizer.prospect_prompt_suffix_ids = prompt_suffix_ids(model_dir, tokenizer)
    tokenizer.prospect_suppressed_ids = control_token_ids(model_dir, tokenizer)
    model = load_causal_lm(model_dir)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()  # an adapter: fold it in, generation is then plain
    model.eval()
    return model, tokenizer


@torch.no_grad()
def generate_completions(
    model_dir_or_pair: str | Path | tuple,
    prompts: Sequence[Any],
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 256,
) -> list[str]:
    """Completions for prompts (strings or chat message lists). temperature 0 = greedy decoding.

    ``model_dir_or_pair`` is a model directory or an already loaded (model, tokenizer) pair.
    Prompts are left-padded in batches; sampling is seeded, so results are reproducible.
    """
    if isinstance(model_dir_or_pair, tuple):
        model, tokenizer = model_dir_or_pair
    else:
        model, tokenizer = load_for_generation(model_dir_or_pair)
    device = next(model.parameters()).device
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = _left_padded(tokenizer, prompts[start : start + batch_size])
            width = input_ids.shape[1]
            sampling = _sampling_options(tokenizer, temperature)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
            completions.extend(tokenizer.batch_decode(output[:, width:], skip_special_tokens=True))
    finally:
        torch.set_rng_state(generator_state)
    return completions


def _left_padded(tokenizer, prompts: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of prompts formatted as in training, left-padded to one width."""
    texts_and_flags = [prompt_text(tokenizer, prompt) for prompt in prompts]
    suffix = list(getattr(tokenizer, "prospect_prompt_suffix_ids", []))
    encoded = [
        tokenizer(text, add_special_tokens=not templated)["input_ids"] + suffix for text, templated in texts_and_flags
    ]
    width = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def _sampling_options(tokenizer, temperature: float) -> dict:
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    if getattr(tokenizer, "prospect_suppressed_ids", None):
        sampling["suppress_tokens"] = list(tokenizer.prospect_suppressed_ids)
    return sampling


def stream_completion(
    model_and_tokenizer: tuple,
    prompt: Any,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    seed: int = 0,
    lock=None,
) -> Iterator[str]:
    """One prompt's completion as text pieces while it is generated (same formatting and decoding as
    generate_completions; joined, the pieces equal its completion for the same seed).

    Generation runs in a thread of its own (holding `lock`, if given, for its duration); the caller
    reads the pieces as they come. Stopping early leaves the thread to finish its generation.
    """
    from transformers import TextIteratorStreamer

    model, tokenizer = model_and_tokenizer
    device = next(model.parameters()).device
    input_ids, attention_mask = _left_padded(tokenizer, [prompt])
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with lock if lock is not None else contextlib.nullcontext():
                generator_state = torch.get_rng_state()
                torch.manual_seed(seed)
                try:
                    with torch.no_grad():
                        model.generate(
                            input_ids=input_ids.to(device),
                            attention_mask=attention_mask.to(device),
                            max_new_tokens=max_new_tokens,
                            pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            streamer=streamer,
                            **_sampling_options(tokenizer, temperature),
                        )
                finally:
                    torch.set_rng_state(generator_state)
        except BaseException as exc:  # handed to the reading thread below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="prospect-stream", daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]
