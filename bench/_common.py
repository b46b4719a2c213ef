"""Shared by bench/speed_vs_trl.py and bench/gpu_speed.py: local models, synthetic data, and one
training run of Prospect or TRL measured in a fresh subprocess (so peak memory is per trainer)."""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

ALPHABET = "abcdefghijklmnopqrstuvwxyz      .,?0123456789"


class Shape(NamedTuple):
    """A bench model's shape; its weights are random, its special token ids the tokenizer's."""

    architecture: str  # a key of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False
    # Too big for an fp32 init on the host (minutes for 7B): built in bf16, on the GPU when there
    # is one, and saved in bf16.
    bf16: bool = False


# architecture: (config class, model class, the config fields its kinds share)
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"max_position_embeddings": 2048}),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    ),
}

MODEL_SHAPES = {
    # What a new user tries first on a CPU: a 4-layer d256 Llama, a 32k-row embedding (real
    # vocabularies are 32k-150k), the BPE fixture tokenizer (ids beyond its 600 are never produced).
    "bpe-llama": Shape("llama", 32000, 256, 688, 4, 4, 4),
    # Small enough for a 2-core CPU, with a realistic vocabulary so the LM head matters.
    "cpu-small": Shape("llama", 32000, 192, 512, 3, 4, 4, tie_word_embeddings=True),
    # Qwen2.5's published shapes (configs built locally; weights random).
    "qwen2.5-0.5b": Shape("qwen2", 151936, 896, 4864, 24, 14, 2, tie_word_embeddings=True),
    "qwen2.5-1.5b": Shape("qwen2", 151936, 1536, 8960, 28, 12, 2, tie_word_embeddings=True),
    "qwen2.5-7b": Shape("qwen2", 152064, 3584, 18944, 28, 28, 4, bf16=True),
    "tiny": Shape("llama", 1024, 64, 128, 2, 2, 2, tie_word_embeddings=True),
}


def model_config(kind: str, **special_token_ids):
    """The transformers config of a bench model kind (MODEL_SHAPES), with the tokenizer's special ids."""
    import torch
    import transformers

    if kind not in MODEL_SHAPES:
        raise ValueError(kind)
    fields = MODEL_SHAPES[kind]._asdict()
    config_class, _, shared = ARCHITECTURES[fields.pop("architecture")]
    if fields.pop("bf16"):
        fields["dtype"] = torch.bfloat16
    return getattr(transformers, config_class)(**shared, **fields, **special_token_ids)


def save_random_model(out_dir: Path, kind: str, seed: int = 0) -> str:
    """A randomly initialised causal LM saved with the demo character tokenizer (model ids beyond
    the tokenizer's vocabulary are simply never produced; the LM head still spans the whole vocab)."""
    import torch
    import transformers

    from training.kto.demo import build_tokenizer

    torch.manual_seed(seed)
    if kind.startswith("bpe-"):
        from training.kto.fixtures import build_tokenizer as build_family_tokenizer

        # The byte-level BPE family of the real-tokenizer fixtures (GPT-2 / Qwen style, no BOS).
        tokenizer = build_family_tokenizer("bpe")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer = build_tokenizer()
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    config = model_config(kind, **special)
    model_class = getattr(transformers, ARCHITECTURES[MODEL_SHAPES[kind].architecture][1])
    if MODEL_SHAPES[kind].bf16:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = model_class(config).to(torch.bfloat16)
    else:
        model = model_class(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def write_synthetic_kto(
    path: Path, n: int, prompt_chars: tuple[int, int], completion_chars: tuple[int, int], seed: int = 0
) -> str:
    """Random-text KTO rows with varied lengths (so padding and bucketing matter), labels ~50/50."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*prompt_chars)))
        completion = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*completion_chars))).strip() or "x"
        rows.append({"prompt": prompt, "completion": completion, "label": rng.random() < 0.5})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_synthetic_kto_words(
    path: Path,
    model_dir: str,
    n: int,
    prompt_tokens: tuple[int, int],
    completion_tokens: tuple[int, int],
    seed: int = 0,
    system_tokens: int = 0,
) -> str:
    """Rows of English-like words from the fixture corpus, each prompt / completion drawn to a
    random length in tokens of the model's tokenizer (so BPE merges behave as on real text).
    ``system_tokens`` > 0: every prompt begins with the same text of about that many tokens, as a
    product's system prompt would."""
    from training.kto.fixtures import corpus
    from training.kto.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    words = sorted({word for line in corpus() for word in line.split()})
    cost = {word: len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) for word in words}
    rng = random.Random(seed)

    def text(bounds: tuple[int, int]) -> str:
        target, picked, used = rng.randint(*bounds), [], 0
        while used < target:
            word = rng.choice(words)
            picked.append(word)
            used += cost[word]
        return " ".join(picked)

    system = text((system_tokens, system_tokens)) + " " if system_tokens > 0 else ""
    rows = [
        {
            "prompt": system + text(prompt_tokens),
            "completion": " " + text(completion_tokens),
            "label": rng.random() < 0.5,
        }
        for _ in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def count_tokens(model_dir: str, data_path: str, max_length: int) -> int:
    """Prompt + completion (+EOS) tokens of the dataset, the same numerator for both trainers."""
    from training.kto import data as kto_data
    from training.kto.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    examples = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(data_path))
    return sum(kto_data.sequence_length(example, max_length) for example in examples)


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_prospect(spec: dict) -> dict:
    """One Prospect run, timed end to end (model load, tokenization, reference pass, loop, save)."""
    import accelerate  # noqa: F401  (imports outside the timed region, as for TRL below)
    import peft  # noqa: F401
    import torch
    import tqdm.auto  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from training.kto.trainer import TrainConfig, train

    options = dict(
        model=spec["model"],
        data=spec["data"],
        out=spec["out"],
        beta=0.1,
        learning_rate=spec["learning_rate"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"],
        num_train_epochs=spec["epochs"],
        max_length=spec["max_length"],
        desirable_weight=1.0,
        undesirable_weight=1.0,
        warmup_ratio=0.1,
        seed=spec["seed"],
        lora=spec["lora"],
        lora_r=16,
        lora_alpha=32,
        reference=spec["reference"],
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        bf16=spec.get("bf16", "auto"),
        progress=False,
        logging_steps=1,
    )
    options.update(spec.get("engine_options", {}))  # a lever may override any of the above
    device = "cuda" if torch.cuda.is_available() else "cpu"
    baseline_memory_mb = peak_memory_mb(device)  # the process before training: Python, torch, libraries
    started = time.perf_counter()
    summary = train(TrainConfig(**options))
    elapsed = time.perf_counter() - started
    records = [json.loads(line) for line in (Path(spec["out"]) / "metrics.jsonl").read_text().splitlines()]
    shares = [record["no_grad_share"] for record in records if record.get("no_grad_share") is not None]
    return {
        "seconds": elapsed,
        "losses": [record["loss"] for record in records],
        # The no-grad passes' (z0, live reference) share of the loop's forward/backward time, averaged over steps.
        "no_grad_share": round(sum(shares) / len(shares), 4) if shares else None,
        "peak_memory_mb": peak_memory_mb(device),
        "baseline_memory_mb": baseline_memory_mb,
        "reference_cache": summary["reference_cache"],
        "loop_seconds": summary["train_runtime_s"],
        "phase_seconds": summary["phase_seconds"],
        "speed_levers": summary["speed_levers"],  # as they ran: a lever a model fails at start is off
        "profile": summary.get("profile"),  # with engine_options {"profile_steps": N}
        "memory_plan": summary.get("memory_plan"),  # with engine_options {"checkpoint_policy": "auto"}
    }


def run_trl(spec: dict) -> dict:
    """One TRL KTOTrainer run with the same model, data, batch, epochs, schedule and reference handling."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    from training.kto.modeling import load_tokenizer

    try:
        from datasets import fingerprint

        # datasets fingerprints map() functions by pickling them with dill, which fails on some
        # Python/pyarrow combinations (seen: Python 3.12, "Can't pickle MonthDayNano"). The
        # fingerprint only names cache files, so a random one changes nothing measured here.
        fingerprint.Hasher.hash = classmethod(lambda cls, value: fingerprint.generate_random_fingerprint())
    except (ImportError, AttributeError):
        pass
    started = time.perf_counter()
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(rows)
    tokenizer = load_tokenizer(spec["model"])
    # fp32 weights, as the engine loads them (load_causal_lm), whatever dtype the files hold.
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    on_gpu = torch.cuda.is_available()
    args = KTOConfig(
        output_dir=spec["out"],
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=spec["grad_accum"],
        num_train_epochs=spec["epochs"],
        learning_rate=spec["learning_rate"],
        beta=0.1,
        max_length=spec["max_length"],
        desirable_weight=1.0,
        undesirable_weight=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # a float < 1 is a ratio in transformers 5 max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=spec["seed"],
        bf16=on_gpu,
        precompute_ref_log_probs=spec["reference"] == "precompute",
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=spec.get("gradient_checkpointing", False),
        use_cpu=not on_gpu,
    )
    peft_config = None
    if spec["lora"]:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    trainer = KTOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()
    trainer.save_model(spec["out"] + "/final")
    elapsed = time.perf_counter() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    device = "cuda" if on_gpu else "cpu"
    return {"seconds": elapsed, "losses": losses, "peak_memory_mb": peak_memory_mb(device)}


def measure(trainer: str, spec: dict, threads: int, timeout: float = 1800) -> dict:
    """Run one trainer in a fresh Python process; returns its measurements or {"error": ...}."""
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONPATH=python_path)
    command = [sys.executable, str(Path(__file__).resolve()), trainer, json.dumps(spec)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (result.stderr or result.stdout)[-2000:]}


if __name__ == "__main__":
    # Worker mode: python bench/_common.py prospect|trl SPEC_JSON
    import torch

    spec = json.loads(sys.argv[2])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    runner = {"prospect": run_prospect, "trl": run_trl}[sys.argv[1]]
    try:
        print(json.dumps(runner(spec)))
    except Exception as error:  # report, don't hide: the caller prints it next to the other figures
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
