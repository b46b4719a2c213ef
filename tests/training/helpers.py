"""Shared test data of the training tests: demo-task votes, a tiny training config, run lookups."""

from __future__ import annotations

from pathlib import Path

from feedback.services import create_generation, record_vote
from feedback.services.generations import GenerationInput

# Small enough to train in seconds on a CPU; the loop, not the model quality, is under test.
TINY_TRAINING = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_steps": 3,
    "max_length": 32,
    "learning_rate": 1e-4,
    "holdout": 0.0,
    "judges": "heldout",
    "judge_prompts": 16,
}


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


def run_status(run_id: int) -> str:
    from training.models import TrainingRun

    return TrainingRun.objects.get(pk=run_id).status


def run_dirs(data_dir: Path, run_id: int) -> list[Path]:
    return sorted((data_dir / "runs").glob(f"run-{run_id}-*"))


def loadable_artifact(path) -> str:
    """A directory that passes the registry's artifact check (a JSON config and a readable, empty
    safetensors file) without being a model: for tests of the registry's bookkeeping only."""
    import json
    import struct

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "stand-in"}))
    (path / "model.safetensors").write_bytes(struct.pack("<Q", 2) + b"{}")
    return str(path)
