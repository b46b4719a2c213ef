"""Simulated feedback on the demo task: sample the model, let simulated_annotator label it.

Kept apart from demo.py on purpose: the cached demo model is keyed by demo.py's source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .demo import demo_prompts, simulated_annotator
from .generation import generate_completions, load_for_generation


def simulated_feedback(
    model_dir: str | Path | tuple,
    n_prompts: int,
    seed: int = 0,
    samples_per_prompt: int = 2,
    temperature: float = 1.0,
    split: str = "train",
) -> list[dict[str, Any]]:
    """KTO rows {prompt, completion, label} from sampled completions of the demo train prompts."""
    model = load_for_generation(model_dir) if not isinstance(model_dir, tuple) else model_dir
    prompts = demo_prompts(n_prompts, seed=seed, split=split)
    repeated = [prompt for prompt in prompts for _ in range(samples_per_prompt)]
    completions = generate_completions(model, repeated, max_new_tokens=5, temperature=temperature, seed=seed)
    return [
        {"prompt": p, "completion": c, "label": simulated_annotator(p, c)}
        for p, c in zip(repeated, completions)
        if c.strip()
    ]  # an empty sample cannot be a KTO row


def write_jsonl(rows: list[dict[str, Any]], path: str | Path) -> str:
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)
