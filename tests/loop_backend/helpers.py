"""Shared test data for the loop back end: demo-task votes cast through the feedback services."""
from __future__ import annotations

from feedback.services import create_generation, record_vote
from feedback.services.generations import GenerationInput


def cast_demo_votes(n_prompts: int, *, seed: int = 0, voter: str = "sim") -> list[int]:
    """For n demo training prompts, a right and a wrong answer, each rated by the simulated annotator.

    Returns the vote ids. The labels come from the demo task's simulated annotator, so this is
    exactly the data the real loop produces (desirable = the right sum).
    """
    from training.kto.demo import correct_answer, demo_prompts, simulated_annotator

    vote_ids = []
    for prompt in demo_prompts(n_prompts, seed=seed, split="train"):
        right = correct_answer(prompt)
        for completion in (right, str(int(right) + 1)):
            generation, _ = create_generation(GenerationInput(prompt=prompt, completion=completion, source="test"))
            vote, _ = record_vote(
                generation_id=generation.pk,
                desirable=simulated_annotator(prompt, completion),
                external_user_id=voter,
                source="test",
            )
            vote_ids.append(vote.pk)
    return vote_ids
