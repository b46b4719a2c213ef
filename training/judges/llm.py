"""The `llm` judge: an LLM behind any OpenAI-compatible chat completions endpoint compares the
candidate's and the active version's answers to the run's held-out prompts.

The answers are the versions' greedy outputs stored for the compare page (HeldoutOutput; the ones
missing are generated first), on up to `judge_prompts` held-out prompts. For every prompt the judge
model is asked twice, once with the candidate's answer as A and once as B, so a judge that favours
a position cannot favour a version. Each parsed answer gives the candidate 1 (it won), ½ (tie) or
0; a prompt's score is the mean over its parsed answers; the win rate is the mean over prompts,
with a paired bootstrap interval over prompts. Identical answers are ties without asking.
Answers that are not A, B or tie are counted as unparseable and shown; a prompt with no parsed
answer is left out. Promoted when the interval lies above 50 %.

The policy names the endpoint (llm_judge_url, a base URL ending in /v1), the model, the prompt
template ({prompt}, {answer_a}, {answer_b}) and the environment variable that holds the API key.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from feedback.content import prompt_sha256
from training.judges import Outcome, Verdict
from training.judges.statistics import paired_bootstrap, percent, percent_range
from training.measurements import GateError, heldout_prompts, holdout_path, store_heldout_outputs

NAME = "llm"
REQUEST_TIMEOUT_SECONDS = 120
PARALLEL_REQUESTS = 8
_PLACEHOLDER = re.compile(r"\{(prompt|answer_a|answer_b)\}")
# "A", "b.", "Tie", "Answer B", "**A**": the whole reply, give or take punctuation and markup.
_ANSWER = re.compile(r"^\W*(?:answer\s+)?(a|b|tie)\W*$", re.IGNORECASE)


def start(candidate, active, policy) -> None:
    """Nothing to collect: the LLM answers at once."""


def render_prompt(prompt) -> str:
    """A stored prompt as text for the judge: a string as is, chat messages as 'role: content' lines."""
    if isinstance(prompt, list):
        return "\n".join(f"{message.get('role', 'user')}: {message.get('content', '')}" for message in prompt)
    return str(prompt)


def fill_template(template: str, *, prompt: str, answer_a: str, answer_b: str) -> str:
    """The template with its placeholders filled in one pass (text containing '{answer_b}' stays text)."""
    values = {"prompt": prompt, "answer_a": answer_a, "answer_b": answer_b}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def parse_answer(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply; None when it is anything else (unparseable)."""
    match = _ANSWER.match((text or "").strip())
    if match is None:
        return None
    answer = match.group(1).lower()
    return "tie" if answer == "tie" else answer.upper()


def client_for(policy):
    from openai import OpenAI

    api_key = os.environ.get(policy.llm_judge_api_key_env, "") if policy.llm_judge_api_key_env else ""
    # OpenAI-compatible servers without auth still expect some key in the header.
    return OpenAI(
        base_url=policy.llm_judge_url, api_key=api_key or "none", timeout=REQUEST_TIMEOUT_SECONDS, max_retries=1
    )


def ask(client, model: str, text: str) -> str | None:
    """The judge's reply, or None when the request failed (counted like an unparseable answer)."""
    from openai import OpenAIError

    try:
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0.0, max_tokens=8
        )
    except OpenAIError:
        return None
    return response.choices[0].message.content if response.choices else None


def judge(candidate, active, policy) -> Verdict:
    if not policy.llm_judge_url or not policy.llm_judge_model:
        return Verdict(
            NAME, Outcome.INCONCLUSIVE, "the LLM judge has no endpoint URL or model configured: not promoted"
        )
    path = holdout_path(candidate)
    prompts = heldout_prompts(path, limit=int(policy.judge_prompts)) if path is not None else []
    if not prompts:
        return Verdict(NAME, Outcome.INCONCLUSIVE, "no held-out prompts for the LLM judge: not promoted")
    for version in (candidate, active):
        store_heldout_outputs(version, prompts)
    outputs = {
        side: dict(version.heldout_outputs.values_list("prompt_sha256", "completion"))
        for side, version in (("candidate", candidate), ("active", active))
    }
    pairs = [
        (prompt, outputs["candidate"][sha], outputs["active"][sha])
        for prompt in prompts
        if (sha := prompt_sha256(prompt)) in outputs["candidate"] and sha in outputs["active"]
    ]
    client = client_for(policy)
    return compare(
        pairs,
        lambda text: ask(client, policy.llm_judge_model, text),
        template=policy.llm_judge_prompt,
        confidence=float(policy.confidence),
        model=policy.llm_judge_model,
    )


def compare(pairs, ask_judge, *, template: str, confidence: float, model: str = "") -> Verdict:
    """The verdict on (prompt, candidate answer, active answer) triples; ask_judge(text) -> reply or None."""
    questions = []  # (pair index, True when the candidate is A)
    texts = []
    identical = 0
    for index, (prompt, candidate_answer, active_answer) in enumerate(pairs):
        if candidate_answer.strip() == active_answer.strip():
            identical += 1
            continue
        shown = render_prompt(prompt)
        for candidate_first in (True, False):
            a, b = (candidate_answer, active_answer) if candidate_first else (active_answer, candidate_answer)
            questions.append((index, candidate_first))
            texts.append(fill_template(template, prompt=shown, answer_a=a, answer_b=b))
    with ThreadPoolExecutor(max_workers=PARALLEL_REQUESTS) as pool:
        replies = list(pool.map(ask_judge, texts))
    if texts and all(reply is None for reply in replies):
        raise GateError(f"the LLM judge answered none of {len(texts)} requests (is the endpoint reachable?)")

    scores: dict[int, list[float]] = {}
    unparseable = 0
    position_a_chosen = 0
    for (index, candidate_first), reply in zip(questions, replies):
        answer = parse_answer(reply)
        if answer is None:
            unparseable += 1
            continue
        position_a_chosen += answer == "A"
        if answer == "tie":
            score = 0.5
        else:
            score = 1.0 if (answer == "A") == candidate_first else 0.0
        scores.setdefault(index, []).append(score)
    per_prompt = [sum(values) / len(values) for values in scores.values()] + [0.5] * identical
    evidence = {
        "model": model,
        "prompts": len(pairs),
        "identical_answers": identical,
        "requests": len(texts),
        "unparseable": unparseable,
        "answers_choosing_a": position_a_chosen,
        "confidence": confidence,
    }
    unparseable_note = f"; {unparseable} of {len(texts)} answers unparseable" if texts else ""
    if not per_prompt:
        return Verdict(
            NAME,
            Outcome.INCONCLUSIVE,
            f"LLM judge {model}: no parseable answer{unparseable_note}: not promoted",
            evidence,
        )
    result = paired_bootstrap([score - 0.5 for score in per_prompt], confidence)
    win_rate, low, high = 0.5 + result.mean, 0.5 + result.low, 0.5 + result.high
    better = result.better()
    evidence.update(judged_prompts=len(per_prompt), win_rate=win_rate, ci_low=low, ci_high=high)
    sentence = (
        f"LLM judge {model}: candidate wins {percent(win_rate)} of {len(per_prompt)} held-out prompts "
        f"(both orders asked, ties split), {percent(confidence)} CI {percent_range(low, high)}"
        f"{unparseable_note}: {'promoted' if better else 'not promoted'}"
    )
    return Verdict(NAME, Outcome.PROMOTE if better else Outcome.REJECT, sentence, evidence)
