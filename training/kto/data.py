"""Reading TRL-format KTO JSONL, tokenizing, mismatched pairs and length-bucketed microbatches.

File format (what TRL's KTOTrainer reads and ``manage.py export_kto`` writes), one JSON object a line:
    {"prompt": "What is 2+2?" | [{"role": "user", "content": "..."}, ...],
     "completion": "4", "label": true}
Extra keys are ignored. For the DPO baseline, rows may instead be {"prompt", "chosen", "rejected"};
otherwise pairs are formed from KTO rows sharing a prompt (one desirable with one undesirable).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch


# Bumped whenever the engine's tokenization changes the ids a row becomes: part of the identity of
# cached reference log-probs (trainer.reference_identity).
TOKENIZATION_VERSION = 1


class DataError(ValueError):
    """A bad data file; the message names the file, the line and the field."""


@dataclass(frozen=True)
class KTOExample:
    prompt: Any  # str, or a list of {"role", "content"} chat messages
    completion: str
    label: bool  # True = desirable
    line: int  # 1-based line number in the source file


@dataclass(frozen=True)
class PreferencePair:
    prompt: Any
    chosen: str
    rejected: str
    line: int


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]  # ends with EOS
    label: bool


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        for index, message in enumerate(prompt):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DataError(f"{where}: field 'prompt' message {index} must be an object with string "
                                f"'role' and 'content', got {json.dumps(message)[:80]}")
        return
    raise DataError(f"{where}: field 'prompt' must be a string or a non-empty list of chat messages, "
                    f"got {type(prompt).__name__}")


def _completion_text(value: Any, field: str, where: str) -> str:
    # TRL's conversational format gives the completion as a list of assistant messages.
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in value):
        value = "".join(m["content"] for m in value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value


def _read_rows(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: malformed JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object, got {type(row).__name__}")
            yield line_number, where, row


def read_kto_jsonl(path: str | Path) -> list[KTOExample]:
    """Read and validate a KTO JSONL file; raise DataError naming the first bad line and field."""
    examples = []
    for line_number, where, row in _read_rows(path):
        for field in ("prompt", "completion", "label"):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}'")
        _check_prompt(row["prompt"], where)
        completion = _completion_text(row["completion"], "completion", where)
        if not isinstance(row["label"], bool):
            raise DataError(f"{where}: field 'label' must be a JSON boolean (true/false), "
                            f"got {json.dumps(row['label'])}")
        examples.append(KTOExample(row["prompt"], completion, row["label"], line_number))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_preference_pairs(path: str | Path) -> list[PreferencePair]:
    """Pairs for the DPO baseline: rows {prompt, chosen, rejected}, or KTO rows paired by prompt."""
    rows = list(_read_rows(path))
    if rows and "chosen" in rows[0][2]:
        pairs = []
        for line_number, where, row in rows:
            for field in ("prompt", "chosen", "rejected"):
                if field not in row:
                    raise DataError(f"{where}: missing field '{field}'")
            _check_prompt(row["prompt"], where)
            pairs.append(PreferencePair(row["prompt"], _completion_text(row["chosen"], "chosen", where),
                                        _completion_text(row["rejected"], "rejected", where), line_number))
        if not pairs:
            raise DataError(f"{path}: no preference pairs")
        return pairs
    pairs = pair_by_prompt(read_kto_jsonl(path))
    if not pairs:
        raise DataError(f"{path}: no prompt has both a desirable and an undesirable completion, so there is "
                        "nothing to pair for DPO")
    return pairs


def pair_by_prompt(examples: Sequence[KTOExample]) -> list[PreferencePair]:
    """The paired subset of KTO data: per prompt, the k-th desirable with the k-th undesirable."""
    desirable: dict[str, list[KTOExample]] = {}
    undesirable: dict[str, list[KTOExample]] = {}
    for example in examples:
        key = json.dumps(example.prompt, sort_keys=True)
        (desirable if example.label else undesirable).setdefault(key, []).append(example)
    pairs = []
    for key, goods in desirable.items():
        for good, bad in zip(goods, undesirable.get(key, [])):
            pairs.append(PreferencePair(good.prompt, good.completion, bad.completion, good.line))
    return pairs


# ----------------------------------------------------------------------------------------------
# Tokenization


def prompt_text(tokenizer, prompt: Any) -> tuple[str, bool]:
    """The prompt as text, and whether it came from the chat template (which adds its own BOS)."""
    if isinstance(prompt, str):
        return prompt, False
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True), True
    # No chat template: a plain transcript, so chat-format data still trains on any tokenizer.
    return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: ", False


def tokenize_prompt(tokenizer, prompt: Any) -> list[int]:
    text, templated = prompt_text(tokenizer, prompt)
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    if not ids:
        # The first completion token needs a predecessor to be predicted from.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return list(ids)


def tokenize_completion(tokenizer, completion: str) -> list[int]:
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token; one is needed to end completions")
    return ids + [tokenizer.eos_token_id]


def tokenize_examples(tokenizer, examples: Sequence[KTOExample]) -> list[TokenizedExample]:
    prompt_cache: dict[str, tuple[int, ...]] = {}
    tokenized = []
    for example in examples:
        key = json.dumps(example.prompt, sort_keys=True)
        if key not in prompt_cache:
            prompt_cache[key] = tuple(tokenize_prompt(tokenizer, example.prompt))
        tokenized.append(TokenizedExample(prompt_cache[key], tuple(tokenize_completion(tokenizer, example.completion)),
                                          example.label))
    return tokenized


def join_truncated(prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int) -> tuple[list[int], int]:
    """prompt + completion within max_length: the completion is kept and the prompt trimmed from the
    left (its end is what the completion answers); at least one prompt token stays.
    Returns (token ids, number of prompt tokens)."""
    completion = list(completion_ids[: max_length - 1])
    prompt = list(prompt_ids[-(max_length - len(completion)):])
    return prompt + completion, len(prompt)


def collate(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int, pad_token_id: int,
            width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / completion_mask for (prompt_ids, completion_ids) pairs.
    Right padding keeps positions 0..n-1 for every sequence, so no position ids are needed."""
    joined = [join_truncated(p, c, max_length) for p, c in sequences]
    width = max(width or 0, max(len(ids) for ids, _ in joined))
    input_ids = torch.full((len(joined), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(joined), width), dtype=torch.long)
    completion_mask = torch.zeros((len(joined), width), dtype=torch.bool)
    for row, (ids, n_prompt) in enumerate(joined):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, n_prompt: len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def sequence_length(example: TokenizedExample, max_length: int) -> int:
    return min(len(example.prompt_ids) + len(example.completion_ids), max_length)


# ----------------------------------------------------------------------------------------------
# Mismatched pairs and batching


def mismatched_partners(microbatch_size: int) -> list[int]:
    """Index j of the completion paired with prompt i: j = (i+1) mod m (paper Eq. 8)."""
    if microbatch_size < 2:
        raise ValueError(
            f"KTO needs a microbatch of at least 2 examples to estimate z0 from mismatched pairs "
            f"(x_i, y_(i+1) mod m); got {microbatch_size}. Raise --per-device-train-batch-size to 2 or more."
        )
    return [(i + 1) % microbatch_size for i in range(microbatch_size)]


def plan_epoch(lengths: Sequence[int], microbatch_size: int, seed: int, epoch: int,
               bucket_microbatches: int = 16) -> list[list[int]]:
    """Shuffled, length-bucketed microbatches (lists of example indices) for one epoch.

    The data is shuffled with a generator seeded by (seed, epoch) — a different order every epoch,
    reproducible for resume. Within windows of ``bucket_microbatches`` microbatches, examples are
    sorted by length so each microbatch holds similar lengths (little padding); microbatch order is
    then shuffled again. An incomplete final microbatch is dropped (it reappears, reshuffled, in
    other epochs), so every process gets equally sized microbatches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = microbatch_size * bucket_microbatches
    microbatches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start: start + window], key=lambda index: -lengths[index])
        for offset in range(0, len(chunk) - microbatch_size + 1, microbatch_size):
            microbatches.append(chunk[offset: offset + microbatch_size])
    # Leftovers of the windows (at most one partial microbatch each) are regrouped so few are lost.
    leftovers = [index for start in range(0, len(order), window)
                 for index in sorted(order[start: start + window], key=lambda index: -lengths[index])
                 [(len(order[start: start + window]) // microbatch_size) * microbatch_size:]]
    for offset in range(0, len(leftovers) - microbatch_size + 1, microbatch_size):
        microbatches.append(leftovers[offset: offset + microbatch_size])
    rng.shuffle(microbatches)
    return microbatches
