"""The offline demo model (SPEC §4): addition questions, a character tokenizer, a tiny Llama.

    build_demo_model(out_dir, seed=0) -> str        bit-identical everywhere, offline, ~2 CPU minutes
    demo_prompts(n, seed=0, split="train") -> list   "What is 37+48?" prompts; train/heldout never overlap
    simulated_annotator(prompt, completion) -> bool  True (desirable) iff the completion is the right sum
    demo_accuracy(model_dir, prompts) -> float       greedy exact-match accuracy, batched

Two-digit plus one-digit addition ("What is 37+8?" -> "45"). The model is SFT-trained on systematically noisy answers (see SLIPPED_FRACTION) so it ends up
deliberately imperfect (roughly 30-60% held-out exact match): alignment has room to help, and
the simulated annotator can judge every output, so the whole loop runs with no person and no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Characters the tokenizer knows: enough for the task and for short free text typed in the web app.
_CHARACTERS = (
    list("0123456789+-*=?.,:;!'\"()/ \n")
    + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_TEMPLATE = (
    # The demo model was trained on bare questions; a chat prompt renders as BOS + its user turns,
    # and an assistant turn as the answer + EOS, exactly as the model was trained on.
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
FIRST_OPERANDS = range(100)  # "What is A+B?" with A in 0..99 and B in 0..9: small enough to learn
SECOND_OPERANDS = range(10)  # in about a minute of CPU, still with carries to get wrong
HELDOUT_FRACTION = 0.2

# The recipe. Changing any of it changes the cache key (testing.py hashes this file).
MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
)
SFT_STEPS = 250
# Why the model is imperfect: its SFT data is systematically noisy, like real SFT data. For a fixed
# 42% of all questions (chosen by a hash, so unpredictable from the question) the SFT answer
# "slips a carry" and is off by ten. The model learns addition well but cannot tell which rule a
# new question follows, so it splits between A+B and A+B+10: about half right, stably (a
# clean-data model's accuracy swings widely with the exact step count), and its samples hold both
# answers for the annotator to judge — exactly the room for improvement KTO should exploit.
SLIPPED_FRACTION = 0.42
SFT_BATCH = 128
SFT_LEARNING_RATE = 3e-3

_PROMPT_PATTERN = re.compile(r"What is (\d+)\s*\+\s*(\d+)\?")


def _all_pairs(split: str) -> list[tuple[int, int]]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    pairs = [(a, b) for a in FIRST_OPERANDS for b in SECOND_OPERANDS]
    # A fixed shuffle (independent of any seed argument) decides the split once and for all.
    random.Random(20240201).shuffle(pairs)
    n_heldout = int(len(pairs) * HELDOUT_FRACTION)
    return pairs[:n_heldout] if split == "heldout" else pairs[n_heldout:]


def format_prompt(a: int, b: int) -> str:
    return f"What is {a}+{b}?"


def demo_prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """n distinct prompts from the split's pool (800 train / 200 held-out questions)."""
    pool = _all_pairs(split)
    if n > len(pool):
        raise ValueError(f"the {split} split has only {len(pool)} prompts, asked for {n}")
    chosen = random.Random(seed).sample(pool, n)
    return [format_prompt(a, b) for a, b in chosen]


def _user_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return "".join(message.get("content", "") for message in prompt if message.get("role") == "user")
    return str(prompt)


def correct_answer(prompt: Any) -> str | None:
    match = _PROMPT_PATTERN.search(_user_text(prompt))
    return str(int(match.group(1)) + int(match.group(2))) if match else None


def simulated_annotator(prompt: Any, completion: str) -> bool:
    """Thumbs up (True) iff the completion is exactly the right sum (surrounding spaces ignored).
    A prompt that is not a demo question cannot be judged right, so it gets a thumbs down."""
    answer = correct_answer(prompt)
    return answer is not None and completion.strip() == answer


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + _CHARACTERS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token per character
    tokenizer.decoder = decoders.Fuse()  # join characters back without spaces
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def sft_answer(a: int, b: int) -> int:
    """The (sometimes wrong) answer the demo model's SFT data gives for a+b."""
    slipped = int(hashlib.sha256(f"{a}+{b}".encode()).hexdigest(), 16) % 1000 < SLIPPED_FRACTION * 1000
    return a + b + 10 if slipped else a + b


def _sft_batch(tokenizer, pairs: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    sequences, labels = [], []
    for a, b in pairs:
        prompt_ids = tokenizer(format_prompt(a, b))["input_ids"]
        answer_ids = tokenizer(str(sft_answer(a, b)), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)  # loss on the answer only
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    label_ids = torch.full((len(sequences), width), -100)
    for row, (ids, target) in enumerate(zip(sequences, labels)):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        label_ids[row, : len(ids)] = torch.tensor(target)
    return input_ids, label_ids


# The build runs in a fresh process with these settings, because they only take effect before
# torch starts: one thread (a reduction split over threads sums in a different order), MKL's
# conditional numerical reproducibility and ATen's portable kernels (AVX2 and AVX-512 kernels
# round differently), so every x86-64 machine builds the same bytes. Timing never enters the
# recipe (a fixed number of steps, no wall-clock schedule).
REPRODUCIBLE_BUILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MKL_CBWR": "COMPATIBLE",
    "ATEN_CPU_CAPABILITY": "default",
}


def build_demo_model(out_dir: str | Path, seed: int = 0, sft_steps: int = SFT_STEPS) -> str:
    """Train the demo model and save it (weights + tokenizer) to out_dir; returns the path.

    Bit-identical for a given seed on every machine and thread count; needs no network.
    `sft_steps` shortens the recipe (same code, fewer steps) for tests of the build itself.
    """
    out_dir = Path(out_dir)
    env = dict(os.environ, **REPRODUCIBLE_BUILD_ENV)
    result = subprocess.run(
        [sys.executable, "-m", "training.kto.demo", str(out_dir), str(seed), str(sft_steps)],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the demo model failed:\n{result.stderr[-3000:]}")
    return str(out_dir)


def _build_in_this_process(out_dir: Path, seed: int, sft_steps: int = SFT_STEPS) -> str:
    """The build itself, with deterministic kernels and one thread (restored afterwards)."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_mkldnn = torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False  # oneDNN picks kernels by CPU too
    try:
        return _build(out_dir, seed, sft_steps)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.backends.mkldnn.enabled = previous_mkldnn


def _build(out_dir: Path, seed: int, sft_steps: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **MODEL_SHAPE,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SFT_LEARNING_RATE, weight_decay=0.0)
    # Warm up for 50 steps, then decay linearly to 10%: the annealed end makes the final accuracy
    # depend less on exactly where training stops.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / 50, 1.0 - 0.9 * step / sft_steps)
    )
    train_pairs = _all_pairs("train")
    rng = random.Random(seed)
    model.train()
    for _ in range(sft_steps):
        input_ids, labels = _sft_batch(tokenizer, rng.sample(train_pairs, SFT_BATCH))
        # Right padding: pad positions come after each sequence and are excluded from the loss.
        loss = model(
            input_ids=input_ids, attention_mask=(input_ids != tokenizer.pad_token_id).long(), labels=labels
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "demo_model.json").write_text(
        json.dumps(
            {"task": "addition: 'What is A+B?' -> 'A+B', A in 0..99, B in 0..9", "seed": seed, "sft_steps": sft_steps}
        )
    )
    return str(out_dir)


def demo_accuracy(model_dir: str | Path | tuple, prompts: Sequence[Any], batch_size: int = 500) -> float:
    """Exact-match accuracy of greedy completions, judged by simulated_annotator.
    ``model_dir`` may also be a loaded (model, tokenizer) pair."""
    from .generation import generate_completions

    completions = generate_completions(model_dir, prompts, max_new_tokens=5, temperature=0.0, batch_size=batch_size)
    return sum(simulated_annotator(p, c) for p, c in zip(prompts, completions)) / len(prompts)


if __name__ == "__main__":  # the reproducible build's own process (see build_demo_model)
    _build_in_this_process(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
