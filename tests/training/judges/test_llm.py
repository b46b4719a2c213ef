"""The LLM judge's counting: both orders, ties split, unparseable answers, the template.

(Against a real OpenAI-protocol server, through the gate: tests/training/test_gate.py.)"""

from __future__ import annotations

from training.judges import Outcome
from training.judges.llm import compare, fill_template, parse_answer
from training.models import DEFAULT_LLM_JUDGE_PROMPT


def _pairs(n: int) -> list[tuple[str, str, str]]:
    return [(f"What is {i}+1?", str(i + 1), str(i + 11)) for i in range(n)]  # candidate right, active wrong


def _rule(text: str) -> str:
    """Picks the right sum (the candidate's answer here), wherever it is shown."""
    a = text.split("Answer A:\n")[1].split("\n")[0]
    question = text.split("Request:\n")[1].split("\n")[0]
    right = str(int(question.split()[2].split("+")[0]) + 1)
    return "A" if a == right else "B"


def test_parse_answer_accepts_only_a_b_or_tie():
    assert [parse_answer(t) for t in ("A", " b. ", "**Tie**", "Answer B", "tie!")] == ["A", "B", "tie", "B", "tie"]
    assert [parse_answer(t) for t in ("A is better", "neither", "", None, "AB")] == [None] * 5


def test_a_position_biased_judge_cannot_favour_a_version():
    verdict = compare(_pairs(40), lambda text: "A", template=DEFAULT_LLM_JUDGE_PROMPT, confidence=0.95)
    assert verdict.evidence["win_rate"] == 0.5  # each prompt: won once as A, lost once as B
    assert verdict.outcome == Outcome.REJECT
    assert verdict.evidence["answers_choosing_a"] == 80


def test_wins_ties_and_unparseable_answers_are_counted_and_shown():
    pairs = _pairs(30) + [("What is 5+5?", "10", "10")] * 10  # 10 identical answers: ties, not asked
    calls = []

    def judge(text):
        calls.append(text)
        return "no idea" if len(calls) % 5 == 0 else _rule(text)

    verdict = compare(pairs, judge, template=DEFAULT_LLM_JUDGE_PROMPT, confidence=0.95, model="stand-in")
    assert len(calls) == 60 and verdict.evidence["unparseable"] == 12 and verdict.evidence["identical_answers"] == 10
    # 30 prompts won (on the answers that parsed), 10 ties: 35 / 40.
    assert verdict.evidence["win_rate"] == 35 / 40
    assert verdict.outcome == Outcome.PROMOTE
    assert "candidate wins 88 % of 40 held-out prompts (both orders asked, ties split), 95 % CI" in verdict.sentence
    assert "12 of 60 answers unparseable: promoted" in verdict.sentence


def test_nothing_parseable_is_inconclusive():
    verdict = compare(_pairs(5), lambda text: "hmm", template=DEFAULT_LLM_JUDGE_PROMPT, confidence=0.95)
    assert verdict.outcome == Outcome.INCONCLUSIVE and "10 of 10 answers unparseable" in verdict.sentence


def test_the_template_is_filled_in_one_pass():
    text = fill_template("{prompt}|{answer_a}|{answer_b}", prompt="say {answer_b}", answer_a="1", answer_b="2")
    assert text == "say {answer_b}|1|2"
