"""evaluate(..., per_example_path=...): each held-out example's implied reward, correctness and
loss, which add up to the summary the engine always reported."""

from __future__ import annotations

import json

import pytest
import torch

from training.kto.demo import correct_answer, demo_prompts
from training.kto.evaluation import evaluate
from training.kto.trainer import TrainingError


@pytest.fixture(scope="module")
def perturbed_demo_model(demo_model_dir, tmp_path_factory) -> str:
    """The demo model with noise in its weights: rewards against the demo model are not all zero."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("perturbed") / "model"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1 * parameter.std())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(demo_model_dir).save_pretrained(out)
    return str(out)


def test_per_example_rows_add_up_to_the_summary(perturbed_demo_model, demo_model_dir, tmp_path):
    rows = []
    for prompt in demo_prompts(11, seed=4, split="heldout"):  # 22 rows: microbatches of 8, 8 and 6
        right = correct_answer(prompt)
        rows += [
            {"prompt": prompt, "completion": right, "label": True},
            {"prompt": prompt, "completion": str(int(right) + 10), "label": False},
        ]
    data = tmp_path / "holdout.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "per_example.jsonl"

    summary = evaluate(
        perturbed_demo_model,
        str(data),
        reference_dir=demo_model_dir,
        batch_size=8,
        max_length=32,
        per_example_path=str(out),
    )

    examples = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["per_example"] == str(out) and len(examples) == summary["n_examples"] == 22
    assert [example["index"] for example in examples] == list(range(22))
    assert [example["desirable"] for example in examples] == [row["label"] for row in rows]
    assert sum(example["loss"] for example in examples) / 22 == pytest.approx(summary["loss"], rel=1e-5)
    assert sum(example["correct"] for example in examples) / 22 == pytest.approx(summary["reward_accuracy"])
    desirable = [example["reward"] for example in examples if example["desirable"]]
    assert sum(desirable) / len(desirable) == pytest.approx(summary["reward_desirable"], rel=1e-5)
    assert len({example["reward"] for example in examples}) > 1  # real, varied rewards
    # z0 is per microbatch: the same within each of the three.
    assert len({example["z0"] for example in examples[:8]}) == 1


def test_per_example_needs_a_reference(demo_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps({"prompt": "What is 1+1?", "completion": "2", "label": True})
        + "\n"
        + json.dumps({"prompt": "What is 1+2?", "completion": "4", "label": False})
        + "\n"
    )
    with pytest.raises(TrainingError, match="--per-example needs a reference"):
        evaluate(demo_model_dir, str(data), per_example_path=str(tmp_path / "out.jsonl"))
    assert not (tmp_path / "out.jsonl").exists()
