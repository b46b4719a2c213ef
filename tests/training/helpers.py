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


def build_demo_variants(demo_model_dir: str, out_dir: Path) -> dict[str, str]:
    """Two real models that answer the demo task better and worse than the demo model, cheaply.

    better: the demo model fine-tuned for 120 steps on the right sums (its SFT data slipped a carry
      on 42 % of the questions; these are clean): held-out accuracy 0.405 → 0.83.
    worse: the demo model's weights with Gaussian noise (0.3 of each tensor's spread): about 0.25.
    Seeded and single-threaded, so every session builds the same two models (a few CPU seconds).
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.kto import demo

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        rng = random.Random(0)
        pairs = demo._all_pairs("train")
        for _ in range(120):
            chosen = rng.sample(pairs, 64)
            prompts = [demo.format_prompt(a, b) for a, b in chosen]
            ids, labels = [], []
            for prompt, (a, b) in zip(prompts, chosen):
                prompt_ids = tokenizer(prompt)["input_ids"]
                answer_ids = tokenizer(str(a + b), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                ids.append(prompt_ids + answer_ids)
                labels.append([-100] * len(prompt_ids) + answer_ids)
            width = max(len(row) for row in ids)
            input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
            label_ids = torch.full((len(ids), width), -100)
            for row, (sequence, target) in enumerate(zip(ids, labels)):
                input_ids[row, : len(sequence)] = torch.tensor(sequence)
                label_ids[row, : len(sequence)] = torch.tensor(target)
            mask = (input_ids != tokenizer.pad_token_id).long()
            model(input_ids=input_ids, attention_mask=mask, labels=label_ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.save_pretrained(out_dir / "better")
        tokenizer.save_pretrained(out_dir / "better")

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.3 * parameter.std())
        model.save_pretrained(out_dir / "worse")
        tokenizer.save_pretrained(out_dir / "worse")
    finally:
        torch.set_num_threads(threads)
    return {"better": str(out_dir / "better"), "worse": str(out_dir / "worse")}


def demo_holdout_rows(n_prompts: int, *, seed: int = 3) -> list[dict]:
    """KTO rows on held-out demo questions: the right sum (desirable) and one off by ten (undesirable,
    the demo model's typical slip), labelled by the simulated annotator."""
    from training.kto.demo import correct_answer, demo_prompts, simulated_annotator

    rows = []
    for prompt in demo_prompts(n_prompts, seed=seed, split="heldout"):
        right = correct_answer(prompt)
        for completion in (right, str(int(right) + 10)):
            rows.append({"prompt": prompt, "completion": completion, "label": simulated_annotator(prompt, completion)})
    return rows
