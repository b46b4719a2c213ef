"""Reading TRL-format KTO JSONL, tokenizing, mismatched pairs and length-bucketed microbatches.

File format (what TRL's KTOTrainer reads and ``manage.py export_kto`` writes), one JSON object a line:
    standard:       {"prompt": "What is 2+2?", "completion": "4", "label": true}
    conversational: {"prompt": [{"role": "user", "content": "What is 2+2?"}, ...],
                     "completion": [{"role": "assistant", "content": "4"}], "label": true}
A chat prompt with a plain-string completion (older exports) is read as that one assistant message.
Extra keys are ignored. For the DPO baseline, rows may instead be {"prompt", "chosen", "rejected"};
otherwise pairs are formed from KTO rows sharing a prompt (one desirable with one undesirable).

Tokenization follows TRL 1.16's KTOTrainer (see ``tokenize_example``).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Part of the reference cache key: bump whenever the token ids this module produces for a row change.
# 1: prompt and completion tokenized separately, EOS always appended, chat completions as plain text.
# 2: TRL's rules: prompt+completion tokenized as one text and split at the common prefix, EOS only
#    when missing, conversational rows through the chat template; --max-prompt-length.
TOKENIZATION_VERSION = 2


class DataError(ValueError):
    """A bad data file; the message names the file, the line and the field."""


@dataclass(frozen=True)
class KTOExample:
    prompt: Any  # str, or a list of {"role", "content"} chat messages
    completion: str  # the text (for messages: their contents joined)
    label: bool  # True = desirable
    line: int  # 1-based line number in the source file
    completion_messages: tuple | None = None  # the completion as given, when it came as messages


@dataclass(frozen=True)
class PreferencePair:
    prompt: Any
    chosen: str
    rejected: str
    line: int
    chosen_messages: tuple | None = None
    rejected_messages: tuple | None = None


@dataclass(frozen=True)
class TokenizedExample:
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]  # ends with EOS, or with the chat template's end of turn
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
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(
                    f"{where}: field 'prompt' message {index} must be an object with string "
                    f"'role' and 'content', got {json.dumps(message)[:80]}"
                )
        return
    raise DataError(
        f"{where}: field 'prompt' must be a string or a non-empty list of chat messages, got {type(prompt).__name__}"
    )


def _completion(value: Any, field: str, where: str, prompt: Any) -> tuple[str, tuple | None]:
    """(text, messages): TRL's conversational format gives the completion as a list of messages
    (one assistant message); the text is their contents joined."""
    messages = None
    if isinstance(value, list):
        if not isinstance(prompt, list):
            raise DataError(
                f"{where}: field '{field}' is a list of messages but 'prompt' is a string; a "
                "conversational row has both as messages (TRL's format), a standard row both as strings"
            )
        if not value:
            raise DataError(f"{where}: field '{field}' is an empty list of messages")
        for index, message in enumerate(value):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise DataError(
                    f"{where}: field '{field}' message {index} must be an object with string "
                    f"'role' and 'content', got {json.dumps(message)[:80]}"
                )
        messages = tuple(dict(message) for message in value)
        value = "".join(message["content"] for message in value)
    if not isinstance(value, str):
        raise DataError(
            f"{where}: field '{field}' must be a string or a list of chat messages, got {type(value).__name__}"
        )
    if not value.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return value, messages


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
        completion, messages = _completion(row["completion"], "completion", where, row["prompt"])
        if not isinstance(row["label"], bool):
            raise DataError(
                f"{where}: field 'label' must be a JSON boolean (true/false), got {json.dumps(row['label'])}"
            )
        examples.append(KTOExample(row["prompt"], completion, row["label"], line_number, messages))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_prompt_completion_jsonl(path: str | Path) -> list[KTOExample]:
    """Rows {prompt, completion} for scoring, in file order; a label is optional (False if absent)."""
    examples = []
    for line_number, where, row in _read_rows(path):
        for field in ("prompt", "completion"):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}'")
        _check_prompt(row["prompt"], where)
        completion, messages = _completion(row["completion"], "completion", where, row["prompt"])
        examples.append(KTOExample(row["prompt"], completion, row.get("label") is True, line_number, messages))
    if not examples:
        raise DataError(f"{path}: no rows")
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
            chosen, chosen_messages = _completion(row["chosen"], "chosen", where, row["prompt"])
            rejected, rejected_messages = _completion(row["rejected"], "rejected", where, row["prompt"])
            pairs.append(
                PreferencePair(row["prompt"], chosen, rejected, line_number, chosen_messages, rejected_messages)
            )
        if not pairs:
            raise DataError(f"{path}: no preference pairs")
        return pairs
    pairs = pair_by_prompt(read_kto_jsonl(path))
    if not pairs:
        raise DataError(
            f"{path}: no prompt has both a desirable and an undesirable completion, so there is nothing to pair for DPO"
        )
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
            pairs.append(
                PreferencePair(
                    good.prompt,
                    good.completion,
                    bad.completion,
                    good.line,
                    good.completion_messages,
                    bad.completion_messages,
                )
            )
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


def common_prefix_length(ids: Sequence[int], other_ids: Sequence[int], limit: int | None = None) -> int:
    """How many leading tokens the two sequences have in common (at most ``limit``)."""
    length = 0
    for token, other_token in zip(ids if limit is None else ids[:limit], other_ids):
        if token != other_token:
            break
        length += 1
    return length


def _transcript(messages: Sequence[dict]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def tokenize_example(
    tokenizer,
    prompt: Any,
    completion: str,
    completion_messages: Sequence[dict] | None = None,
    max_prompt_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) exactly as TRL 1.16's KTOTrainer builds them.

    Prompt and prompt+completion are tokenized as whole texts and split where they diverge (TRL's
    ``common_prefix_length``), so a token that merges across the boundary (byte-level BPE's
    ``'Ġyes'`` after ``'Answer:'``; SentencePiece's ``'▁'``) is tokenized as the model sees it.
    - standard rows: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion)`` with the
      tokenizer's special tokens (e.g. BOS); EOS is appended to the completion text unless it
      already ends with it;
    - conversational rows (prompt as messages): the chat template renders the prompt with the
      generation prompt, and prompt + completion messages as one conversation, so the completion
      ends with the template's end of turn; no EOS is added. A completion given as a string is the
      assistant message.
    - a chat prompt on a tokenizer without a chat template (TRL refuses it): a plain
      "role: content" transcript, then the standard rules.
    ``max_prompt_length`` keeps the last prompt tokens (their end is what the completion answers).
    """
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token; one is needed to end completions")
    if isinstance(prompt, list) and getattr(tokenizer, "chat_template", None):
        messages = list(completion_messages) if completion_messages else [{"role": "assistant", "content": completion}]
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        full_ids = _chat_ids(tokenizer, list(prompt) + messages, add_generation_prompt=False)
    else:
        if isinstance(prompt, list):
            prompt = _transcript(prompt) + "assistant: "
        if not completion.endswith(tokenizer.eos_token):
            completion = completion + tokenizer.eos_token
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        full_ids = list(tokenizer(prompt + completion)["input_ids"])
    split = common_prefix_length(prompt_ids, full_ids)
    prompt_ids, completion_ids = prompt_ids[:split], full_ids[split:]
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length :]
    return prompt_ids, completion_ids


def _chat_ids(tokenizer, messages: list, add_generation_prompt: bool) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(encoded["input_ids"])


def tokenize_examples(
    tokenizer, examples: Sequence[KTOExample], max_prompt_length: int | None = None
) -> list[TokenizedExample]:
    """Tokenize every example (``tokenize_example``); raise DataError naming the line of a row whose
    completion has no tokens (e.g. a chat template that does not render assistant turns)."""
    tokenized = []
    for example in examples:
        prompt_ids, completion_ids = tokenize_example(
            tokenizer, example.prompt, example.completion, example.completion_messages, max_prompt_length
        )
        if not completion_ids:
            raise DataError(
                f"line {example.line}: the completion has no tokens after tokenization; the tokenizer's "
                "chat template may not render assistant messages"
            )
        tokenized.append(TokenizedExample(tuple(prompt_ids), tuple(completion_ids), example.label))
    return tokenized


def join_truncated(
    prompt_ids: Sequence[int], completion_ids: Sequence[int], max_length: int, truncation: str = "keep_completion"
) -> tuple[list[int], int]:
    """prompt + completion within max_length. Returns (token ids, number of prompt tokens).

    truncation="keep_start" is TRL's: the joined sequence cut at max_length (the completion loses
    its end first, including its EOS / end of turn; TRL drops rows whose prompt alone fills
    max_length before training, see ``fits_trl_max_length``).
    truncation="keep_completion" (the engine's default) trims the prompt from the left instead and
    keeps at least one prompt token: the completion's end, where the answer and its EOS or end of
    turn are, is often what the label judges, and the start of a long prompt is the part farthest
    from it. Only a completion longer than max_length - 1 is cut, from its end as in TRL.
    """
    if truncation == "keep_start":
        ids = list(prompt_ids) + list(completion_ids)
        return ids[:max_length], min(len(prompt_ids), max_length)
    if truncation != "keep_completion":
        raise ValueError(f"truncation must be 'keep_completion' or 'keep_start', got {truncation!r}")
    completion = list(completion_ids[: max_length - 1]) if prompt_ids else list(completion_ids[:max_length])
    room = max_length - len(completion)
    # max(0, ...): a prompt that fits is kept whole (a negative start would slice from the end).
    prompt = list(prompt_ids[max(0, len(prompt_ids) - room) :]) if room > 0 else []
    return prompt + completion, len(prompt)


def fits_trl_max_length(example: TokenizedExample, max_length: int) -> bool:
    """TRL drops examples whose prompt alone fills max_length (no completion token would remain)."""
    return len(example.prompt_ids) < max_length


def collate(
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    max_length: int,
    pad_token_id: int,
    width: int | None = None,
    truncation: str = "keep_completion",
) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / attention_mask / completion_mask for (prompt_ids, completion_ids) pairs.
    Right padding keeps positions 0..n-1 for every sequence, so no position ids are needed."""
    joined = [join_truncated(p, c, max_length, truncation) for p, c in sequences]
    width = max(width or 0, max(len(ids) for ids, _ in joined))
    input_ids = torch.full((len(joined), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(joined), width), dtype=torch.long)
    completion_mask = torch.zeros((len(joined), width), dtype=torch.bool)
    for row, (ids, n_prompt) in enumerate(joined):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        completion_mask[row, n_prompt : len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


# Different prompts share a tree only when they begin with at least this many identical tokens
# (a product's system prompt, a few-shot preamble): a short accidental overlap (a chat template's
# first tokens) saves too little to be worth widening the rows. Identical prompts always share.
MIN_SHARED_PREFIX = 32


def prefix_trees(
    joined: Sequence[tuple[Sequence[int], int]], width_limit: int, min_shared: int = MIN_SHARED_PREFIX
) -> list[list[int]]:
    """Indices of sequences grouped by the prompt tokens they begin with, each group as long as allowed.

    A group (a "tree") is computed as its shared prefix once plus one branch per sequence (see
    ``pack``). In KTO's no-grad passes each prompt is scored with its own completion and with its
    mismatched partner's, so identical prompts always share (a third to a half of those tokens);
    different prompts share when they begin with at least ``min_shared`` identical tokens, e.g. one
    system prompt. A tree's length (shared prefix + every branch) stays within ``width_limit``, and a
    sequence joins a tree only if the tokens the tree saves do not shrink. A sequence with no prompt,
    or one that shares nothing, is a tree of one. Trees are ordered by their first member."""
    order = sorted(range(len(joined)), key=lambda index: (tuple(joined[index][0][: joined[index][1]]), index))
    trees: list[list[int]] = []
    current: list[int] = []
    shared = 0  # the current tree's shared length
    identical = True  # every member of the current tree has the same prompt
    for index in order:
        ids, n_prompt = joined[index]
        if current and n_prompt > 0:
            first_ids, first_n_prompt = joined[current[0]]
            limit = min(shared if len(current) > 1 else max(first_n_prompt - 1, 0), n_prompt - 1)
            common = common_prefix_length(first_ids, ids, limit)
            same_prompt = identical and n_prompt == first_n_prompt and common == n_prompt - 1
            same_prompt = same_prompt and ids[common] == first_ids[common]
            saved_before = (len(current) - 1) * shared
            if (
                (same_prompt or common >= min_shared)
                and len(current) * common >= saved_before
                and _tree_length(joined, current + [index], common) <= width_limit
            ):
                current.append(index)
                shared, identical = common, same_prompt
                continue
        if current:
            trees.append(current)
        current, identical = [index], True
        shared = max(n_prompt - 1, 0)
    if current:
        trees.append(current)
    return sorted(trees, key=lambda tree: min(tree))


def shared_length(joined: Sequence[tuple[Sequence[int], int]], tree: Sequence[int]) -> int:
    """Tokens a tree's members share: their common prefix, but never a member's last prompt token
    (each branch needs its own copy of it, to predict its first completion token)."""
    first_ids, first_n_prompt = joined[tree[0]]
    shared = max(first_n_prompt - 1, 0)
    for index in tree[1:]:
        ids, n_prompt = joined[index]
        shared = common_prefix_length(first_ids, ids, min(shared, max(n_prompt - 1, 0)))
    return shared


def tree_length(joined: Sequence[tuple[Sequence[int], int]], tree: Sequence[int]) -> int:
    """Positions a tree takes in a packed row: the shared prefix once, then per member the rest of
    its prompt (at least its last prompt token, which predicts the completion's first) and its completion."""
    return _tree_length(joined, tree, shared_length(joined, tree))


def _tree_length(joined, tree: Sequence[int], shared: int) -> int:
    return shared + sum(len(joined[index][0]) - shared for index in tree)


def pack(
    joined: Sequence[tuple[Sequence[int], int]], pad_token_id: int, trees: Sequence[Sequence[int]] | None = None
) -> dict[str, Any]:
    """Padding-free rows for already joined (token ids, number of prompt tokens) sequences.

    Sequences are placed first-fit-decreasing into rows as wide as the longest one, so a row never
    attends over more positions than a padded batch of the same sequences would, and almost no
    position is padding. Each sequence restarts its ``position_ids`` at 0: transformers reads the
    restarts as sequence boundaries and builds a block-diagonal causal mask (``attention_mask`` must
    then be None). ``sequence_ids`` names each position's sequence (index into ``joined``; -1 for the
    few padding positions at a row's end), so scores are summed per sequence, never across a
    boundary.

    With ``trees`` (from prefix_trees, or built by the trainer), the members of a tree share one
    copy of their common prefix (``shared_length``: for identical prompts, the prompt minus its
    last token): [shared][rest of prompt 1, completion 1][rest of prompt 2, completion 2]..., every
    branch's positions continuing from the shared prefix's. A branch must see the
    prompt but not the branches before it, which position restarts cannot express, so the rows
    come with ``tree_ids`` and ``branch_ids`` (0: the shared prompt) from which
    ``SequenceLogProbs`` builds the attention mask. Each branch computes exactly the states its
    own sequence would alone: same tokens, same positions, same visible context.
    """
    trees = [[index] for index in range(len(joined))] if trees is None else [list(tree) for tree in trees]
    lengths = [tree_length(joined, tree) for tree in trees]
    width = max(lengths)
    rows: list[list[int]] = []  # tree indices per row
    room: list[int] = []
    for tree in sorted(range(len(trees)), key=lambda t: -lengths[t]):
        row = next((r for r, free in enumerate(room) if free >= lengths[tree]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(tree)
        room[row] -= lengths[tree]
    # Filled in numpy and handed to torch without a copy: a numpy slice assignment costs a fraction
    # of a torch one, and a launch-bound GPU step waits for this host work.
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_token_id, dtype=np.int64)
    position_ids = np.zeros(shape, dtype=np.int64)
    completion_mask = np.zeros(shape, dtype=np.bool_)
    sequence_ids = np.full(shape, -1, dtype=np.int64)
    # Padding positions are trees of their own (attend to themselves only, seen by nothing real).
    tree_ids = np.repeat(-1 - np.arange(width, dtype=np.int64)[None, :], len(rows), axis=0)
    branch_ids = np.zeros(shape, dtype=np.int64)
    for row, members in enumerate(rows):
        start = 0
        for tree in members:
            first_ids = joined[trees[tree][0]][0]
            shared = shared_length(joined, trees[tree])
            tree_ids[row, start : start + lengths[tree]] = tree
            input_ids[row, start : start + shared] = first_ids[:shared]
            position_ids[row, start : start + shared] = np.arange(shared)
            # The shared prompt is labelled as the first member's (a lone sequence is then one id).
            sequence_ids[row, start : start + shared] = trees[tree][0]
            start += shared
            for branch, index in enumerate(trees[tree], start=1):
                ids, n_prompt = joined[index]
                end = start + len(ids) - shared
                input_ids[row, start:end] = ids[shared:]
                position_ids[row, start:end] = np.arange(shared, len(ids))
                completion_mask[row, start + n_prompt - shared : end] = True
                sequence_ids[row, start:end] = index
                branch_ids[row, start:end] = branch
                start = end
        # Padding at the row's end counts as one more sequence (positions restart), so no real
        # token attends to it and it attends to nothing real.
        position_ids[row, start:] = np.arange(width - start)
    input_ids, position_ids, completion_mask, sequence_ids, tree_ids, branch_ids = (
        torch.from_numpy(array)
        for array in (input_ids, position_ids, completion_mask, sequence_ids, tree_ids, branch_ids)
    )
    packed = {
        "input_ids": input_ids,
        "attention_mask": None,
        "completion_mask": completion_mask,
        "position_ids": position_ids,
        "sequence_ids": sequence_ids,
    }
    if any(len(tree) > 1 for tree in trees):
        packed.update(tree_ids=tree_ids, branch_ids=branch_ids)
    return packed


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


def plan_epoch(
    lengths: Sequence[int], microbatch_size: int, seed: int, epoch: int, bucket_microbatches: int = 16
) -> list[list[int]]:
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
        chunk = sorted(order[start : start + window], key=lambda index: -lengths[index])
        for offset in range(0, len(chunk) - microbatch_size + 1, microbatch_size):
            microbatches.append(chunk[offset : offset + microbatch_size])
    # Leftovers of the windows (at most one partial microbatch each) are regrouped so few are lost.
    leftovers = [
        index
        for start in range(0, len(order), window)
        for index in sorted(order[start : start + window], key=lambda index: -lengths[index])[
            (len(order[start : start + window]) // microbatch_size) * microbatch_size :
        ]
    ]
    for offset in range(0, len(leftovers) - microbatch_size + 1, microbatch_size):
        microbatches.append(leftovers[offset : offset + microbatch_size])
    rng.shuffle(microbatches)
    return microbatches


# ----------------------------------------------------------------------------------------------
# TRL-compatible order and pairing (--trl-compat)


def trl_mismatched_partners(microbatch_size: int) -> list[int]:
    """TRL's KL pairing: prompt i with completion (i-1) mod m within each per-device batch (TRL
    rotates the completions by one: (x_1, y_m), (x_2, y_1), ...). A batch of one pairs with itself,
    as in TRL."""
    return [(i - 1) % microbatch_size for i in range(microbatch_size)]


def plan_trl_steps(
    n_examples: int,
    microbatch_size: int,
    world_size: int,
    gradient_accumulation_steps: int,
    num_train_epochs: float,
    max_steps: int = -1,
) -> list[tuple[int, list[list[int]]]]:
    """TRL KTOTrainer's order: its sequential sampler, every epoch the same. Microbatches are
    consecutive rows in file order, the last one possibly smaller (transformers keeps it); a step
    takes gradient_accumulation_steps microbatches, the last step of an epoch the remainder; the
    run has ceil(epochs × steps per epoch) steps (or max_steps), as transformers' Trainer counts."""
    if world_size != 1:
        raise ValueError("--trl-compat runs on one process (TRL's multi-process batch dispatch is not reproduced)")
    microbatches = [
        list(range(start, min(start + microbatch_size, n_examples))) for start in range(0, n_examples, microbatch_size)
    ]
    epoch_steps = [
        microbatches[start : start + gradient_accumulation_steps]
        for start in range(0, len(microbatches), gradient_accumulation_steps)
    ]
    if not epoch_steps:
        return []
    total = max_steps if max_steps > 0 else math.ceil(num_train_epochs * len(epoch_steps))
    return [(index // len(epoch_steps), epoch_steps[index % len(epoch_steps)]) for index in range(total)]
