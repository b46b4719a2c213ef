"""Parse feedback files (JSONL) into binary examples. Pure: reads bytes, writes nothing.

Every format becomes a stream of `ImportExample(line, prompt, completion, desirable, weight)`:
- kto     `{prompt, completion, label}`      label is a JSON boolean
- paired  `{prompt, chosen, rejected}`        → chosen desirable, rejected undesirable (paper §3.1);
                                                with one_y_per_x, only one of the two, at random
- hh      `{chosen, rejected}` transcripts   → each side split at its own last Assistant turn; the
                                                dialogue before it is that side's prompt (usually
                                                the same for both; where an earlier turn was edited
                                                each side keeps its own: KTO needs no pairs)
- scored  `{prompt, completion, score}`      → desirable above the threshold, undesirable below,
                                                items exactly at the threshold are dropped
A completion (or chosen / rejected) of a chat prompt may be a plain string or, in TRL's
conversational format, a one-element list `[{"role": "assistant", "content": ...}]`: both read the same.
Any problem raises `ImportRejected` naming the line and the field; the caller runs the writes in
one transaction, so a rejected file leaves nothing behind. With on_invalid="skip" a bad line (or,
for pairs, a bad side) is left out instead and reported as a `SkippedLine`; the rest is imported.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import BinaryIO

from feedback.content import ContentError, split_hh_transcript, validate_completion, validate_prompt

FORMATS = ("kto", "paired", "hh", "scored")
FORMAT_CHOICES = ("auto",) + FORMATS
# fail: the first bad line rejects the whole file (the default); skip: bad lines are left out, reported.
ON_INVALID_CHOICES = ("fail", "skip")


class ImportRejected(ValueError):
    def __init__(self, message: str, line: int | None = None, field: str | None = None):
        where = f"line {line}: " if line is not None else ""
        super().__init__(where + message)
        self.line = line
        self.field = field


@dataclass(frozen=True)
class ImportExample:
    line: int
    prompt: str | list[dict]
    completion: str
    desirable: bool
    weight: float = 1.0
    # Distinguishes the two examples a paired line produces, so each gets its own vote key.
    part: str = ""


@dataclass(frozen=True)
class SkippedLine:
    """A line (or one side of a pair) left out by on_invalid="skip", and why."""

    line: int | None
    reason: str
    field: str | None = None

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ParseStats:
    format: str = ""
    n_lines: int = 0
    n_dropped_at_threshold: int = 0
    skipped: list[SkippedLine] = dataclass_field(default_factory=list)


def detect_format(row: dict) -> str:
    keys = set(row)
    if "label" in keys:
        return "kto"
    if "score" in keys:
        return "scored"
    if {"chosen", "rejected"} <= keys:
        return "paired" if "prompt" in keys else "hh"
    raise ValueError(
        f"cannot tell the format from the fields {sorted(keys)}: expected one of "
        "{prompt, completion, label}, {prompt, chosen, rejected}, {chosen, rejected}, {prompt, completion, score}"
    )


def read_jsonl_rows(stream: BinaryIO, max_line_bytes: int, skip=None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; never reads more than one line past the limit.

    A bad line raises ImportRejected, or, when `skip` is given, is passed to it and left out.
    """
    line_no = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        line_no += 1
        too_long = len(raw) > max_line_bytes and not raw.endswith(b"\n")
        if too_long and skip is not None:
            while raw and not raw.endswith(b"\n"):  # the rest of the long line, a bounded piece at a time
                raw = stream.readline(max_line_bytes + 1)
        try:
            row = _parse_line(raw, line_no, max_line_bytes, too_long)
        except ImportRejected as exc:
            if skip is None:
                raise
            skip(exc)
            continue
        if row is not None:
            yield line_no, row


def _parse_line(raw: bytes, line_no: int, max_line_bytes: int, too_long: bool) -> dict | None:
    if too_long:
        raise ImportRejected(f"longer than the limit of {max_line_bytes} bytes", line=line_no)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportRejected(
            f"not valid UTF-8 (byte {exc.start}); the file must be UTF-8 JSONL", line=line_no
        ) from None
    if line_no == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark is harmless; accept it.
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportRejected(f"malformed JSON ({exc.msg} at column {exc.colno})", line=line_no) from None
    except RecursionError:
        raise ImportRejected("nested too deeply to be a feedback row", line=line_no) from None
    if not isinstance(row, dict):
        raise ImportRejected(f"each line must be a JSON object (got {type(row).__name__})", line=line_no)
    return row


def _require(row: dict, line: int, *fields: str) -> None:
    for field in fields:
        if field not in row:
            raise ImportRejected(f"missing field '{field}'", line=line, field=field)


def _completion(value, prompt, field: str = "completion") -> str:
    """A completion as text: a string, or TRL's conversational form (one assistant message) for a chat prompt."""
    if isinstance(value, list):
        if not isinstance(prompt, list):
            raise ContentError(
                field,
                "is a list of messages but the prompt is a string; a conversational row has "
                "both as messages (TRL's format), a standard row both as strings",
            )
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise ContentError(
                field, 'as messages must be exactly one assistant message [{"role": "assistant", "content": ...}]'
            )
        value = value[0].get("content")
    return validate_completion(value, field)


def _one_of_pair(examples: tuple[ImportExample, ImportExample], rng: random.Random | None):
    """Both examples of a pair, or (SPEC §1 "one y per x") one of them chosen at random."""
    return examples if rng is None else (examples[rng.randrange(2)],)


def _hh_sides(row: dict, line: int, skip) -> list[ImportExample]:
    """Each side of an HH row split at its own last Assistant turn; a bad side is refused, or skipped."""
    sides = []
    for part, desirable in (("chosen", True), ("rejected", False)):
        try:
            prompt, completion = split_hh_transcript(row[part], part)
        except ContentError as exc:
            if skip is None:
                raise
            skip(ImportRejected(str(exc), line=line, field=exc.field))
            continue
        sides.append(ImportExample(line, prompt, completion, desirable, part=part))
    if len(sides) == 2 and sides[0].prompt == sides[1].prompt and sides[0].completion == sides[1].completion:
        raise ImportRejected("field 'rejected': identical to 'chosen'", line=line, field="rejected")
    return sides


def _examples_from_row(
    fmt: str,
    row: dict,
    line: int,
    threshold: float | None,
    weight_by_distance: bool,
    stats: ParseStats,
    rng: random.Random | None = None,
    skip=None,
):
    if fmt == "kto":
        _require(row, line, "prompt", "completion", "label")
        label = row["label"]
        if not isinstance(label, bool):
            raise ImportRejected(
                f"field 'label': must be a JSON boolean true/false (got {json.dumps(label)})", line=line, field="label"
            )
        prompt = validate_prompt(row["prompt"])
        yield ImportExample(line, prompt, _completion(row["completion"], prompt), label)
    elif fmt == "paired":
        _require(row, line, "prompt", "chosen", "rejected")
        prompt = validate_prompt(row["prompt"])
        chosen = _completion(row["chosen"], prompt, "chosen")
        rejected = _completion(row["rejected"], prompt, "rejected")
        if chosen == rejected:
            raise ImportRejected("field 'rejected': identical to 'chosen'", line=line, field="rejected")
        yield from _one_of_pair(
            (
                ImportExample(line, prompt, chosen, True, part="chosen"),
                ImportExample(line, prompt, rejected, False, part="rejected"),
            ),
            rng,
        )
    elif fmt == "hh":
        _require(row, line, "chosen", "rejected")
        sides = _hh_sides(row, line, skip)
        # Where an earlier turn was edited the two prompts differ: each side keeps its own
        # dialogue (KTO rates each output on its own), rather than the row being refused.
        yield from (_one_of_pair(tuple(sides), rng) if len(sides) == 2 else sides)
    elif fmt == "scored":
        _require(row, line, "prompt", "completion", "score")
        score = row["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise ImportRejected(f"field 'score': must be a number (got {json.dumps(score)})", line=line, field="score")
        prompt = validate_prompt(row["prompt"])
        completion = _completion(row["completion"], prompt)
        if score == threshold:
            stats.n_dropped_at_threshold += 1
            return
        weight = abs(score - threshold) if weight_by_distance else 1.0
        yield ImportExample(line, prompt, completion, score > threshold, weight)


def parse_examples(
    stream: BinaryIO,
    fmt: str = "auto",
    threshold: float | None = None,
    weight_by_distance: bool = False,
    max_line_bytes: int = 1_000_000,
    stats: ParseStats | None = None,
    one_y_per_x: bool = False,
    seed: int = 0,
    on_invalid: str = "fail",
) -> Iterator[ImportExample]:
    """Yield examples from a JSONL byte stream, raising ImportRejected at the first bad line.

    on_invalid="skip": a bad line (for pairs, a bad side) is left out and recorded in
    stats.skipped instead; problems of the whole file (format, threshold, no lines) still raise.

    one_y_per_x: for pairs, keep only one of chosen/rejected, drawn with `seed` (reproducible), so
    the dataset carries no trace of the pairing (the paper's "one-y-per-x" setting).
    """
    rng = random.Random(seed) if one_y_per_x else None
    if on_invalid not in ON_INVALID_CHOICES:
        raise ImportRejected(f"unknown on_invalid {on_invalid!r} (choose fail or skip)", field="on_invalid")
    if fmt not in FORMAT_CHOICES:
        raise ImportRejected(f"unknown format {fmt!r} (choose one of {', '.join(FORMAT_CHOICES)})", field="format")
    if fmt == "scored" and threshold is None:
        raise ImportRejected("the scored format needs a threshold (--threshold T)", field="threshold")
    stats = stats if stats is not None else ParseStats()
    stats.format = "" if fmt == "auto" else fmt
    skip = None
    if on_invalid == "skip":

        def skip(exc: ImportRejected) -> None:
            reason = str(exc).split(": ", 1)[1] if exc.line is not None else str(exc)
            stats.skipped.append(SkippedLine(exc.line, reason, exc.field))

    for line, row in read_jsonl_rows(stream, max_line_bytes, skip):
        stats.n_lines += 1
        if not stats.format:
            try:
                stats.format = detect_format(row)
            except ValueError as exc:
                if skip is None:
                    raise ImportRejected(str(exc), line=line) from None
                skip(ImportRejected(str(exc), line=line))
                continue
            if stats.format == "scored" and threshold is None:
                raise ImportRejected(
                    "the file is in the scored format, which needs a threshold (--threshold T)", line=line
                )
        try:
            # A row's examples are all checked before any is yielded: a skipped row leaves nothing.
            examples = list(
                _examples_from_row(stats.format, row, line, threshold, weight_by_distance, stats, rng, skip)
            )
        except ContentError as exc:
            rejected = ImportRejected(str(exc), line=line, field=exc.field)
            if skip is None:
                raise rejected from None
            skip(rejected)
            continue
        except ImportRejected as exc:
            if skip is None:
                raise
            skip(exc)
            continue
        yield from examples
    if stats.n_lines == 0 and not stats.skipped:
        raise ImportRejected("the file holds no JSON lines")
