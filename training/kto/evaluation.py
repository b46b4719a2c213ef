"""Held-out evaluation (KTO loss, reward accuracy, mean rewards) and per-row scoring of a model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import data as kto_data
from . import loss as kto_loss
from .generation import prompt_suffix_ids
from .modeling import SequenceLogProbs, is_peft_dir, load_causal_lm, load_tokenizer
from .trainer import Reference, TrainConfig, TrainingError, build_microbatch, microbatch_loss


def default_reference(model_dir: str | Path) -> str | None:
    """The reference a model was trained against, when it is recorded: an adapter's base model,
    or the base_model written by our trainer next to full weights."""
    model_dir = Path(model_dir)
    if is_peft_dir(model_dir):
        return json.loads((model_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    record = model_dir / "prospect_training.json"
    if record.is_file():
        base = json.loads(record.read_text()).get("base_model")
        if base and Path(base).exists():
            return base
    return None


@torch.no_grad()
def evaluate(
    model_dir: str,
    data_path: str,
    reference_dir: str | None = None,
    beta: float = 0.1,
    batch_size: int = 8,
    max_length: int = 1024,
    desirable_weight: float | None = None,
    undesirable_weight: float | None = None,
    per_example_path: str | None = None,
) -> dict:
    """Metrics over a KTO JSONL file, microbatch by microbatch in file order (z0 per microbatch,
    exactly as in training). Without a reference, only log-probabilities can be reported.

    With ``per_example_path`` (needs a reference), also write one JSON line per example, in file
    order: ``{"index", "desirable", "reward", "z0", "correct", "loss"}`` — the implied reward
    r = log π(y|x) − log π_ref(y|x), its microbatch's z0, whether r is on the label's side of z0
    (what reward accuracy counts) and the example's own KTO loss λ_y − λ_y σ(β·±(r − z0)). A gate
    can then compare two models example by example (a paired test) instead of by their means."""
    if batch_size < 2:
        raise TrainingError("--batch-size must be at least 2 (z0 needs mismatched pairs)")
    if not Path(model_dir).is_dir():
        raise TrainingError(f"--model {model_dir}: no such directory")
    tokenizer = load_tokenizer(model_dir)
    examples = kto_data.tokenize_examples(tokenizer, kto_data.read_kto_jsonl(data_path))
    # A CSFT model is scored as it generates: after its desirable control token. The reference
    # (which has no control tokens) scores the plain prompts.
    suffix = tuple(prompt_suffix_ids(model_dir, tokenizer))
    policy_examples = (
        [
            kto_data.TokenizedExample(example.prompt_ids + suffix, example.completion_ids, example.label)
            for example in examples
        ]
        if suffix
        else examples
    )
    if len(examples) < 2:
        raise TrainingError(f"{data_path}: at least 2 examples are needed to evaluate")
    record = Path(model_dir) / "prospect_training.json"
    trained_weights = json.loads(record.read_text()).get("class_weights", {}) if record.is_file() else {}
    class_weights = {
        "desirable_weight": desirable_weight or trained_weights.get("desirable_weight", 1.0),
        "undesirable_weight": undesirable_weight or trained_weights.get("undesirable_weight", 1.0),
    }

    adapter = is_peft_dir(model_dir)
    reference_dir = reference_dir or default_reference(model_dir)
    if per_example_path is not None and not adapter and reference_dir is None:
        raise TrainingError("--per-example needs a reference: pass --reference BASE_DIR")
    model = load_causal_lm(model_dir).eval()
    policy = SequenceLogProbs(model)
    policy.verify()
    reference = None
    if adapter:
        reference = Reference(policy, disable_adapter=True)  # the base is the adapter's reference
    elif reference_dir is not None:
        reference = Reference(SequenceLogProbs(load_causal_lm(reference_dir).eval()), disable_adapter=False)

    # File order, microbatches of batch_size; a lone last example joins the previous microbatch.
    chunks = [
        list(range(start, min(start + batch_size, len(examples)))) for start in range(0, len(examples), batch_size)
    ]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2].extend(chunks.pop())
    totals = {
        "loss": 0.0,
        "z0": 0.0,
        "z0_raw": 0.0,
        "desirable_reward_sum": 0.0,
        "desirable_count": 0.0,
        "undesirable_reward_sum": 0.0,
        "undesirable_count": 0.0,
        "correct_count": 0.0,
    }
    logps_desirable, logps_undesirable = [], []
    per_example: list[dict] = []
    config = TrainConfig(
        model=str(model_dir),
        data=str(data_path),
        out="",
        beta=beta,
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        loss="kto",
    )
    for chunk in chunks:
        batch = build_microbatch(policy_examples, chunk, config, tokenizer.pad_token_id, reference_cache=None)
        if reference is not None:
            # The reference's log-probs computed here (the loss uses them as precomputed ones), so
            # the per-example rewards below need no second reference pass.
            plain = (
                build_microbatch(examples, chunk, config, tokenizer.pad_token_id, reference_cache=None)
                if suffix
                else batch
            )
            batch["reference_matched"] = reference.logps(plain["matched"])
            batch["reference_mismatched"] = reference.logps(plain["mismatched"])
        if reference is not None:
            loss, stats = microbatch_loss(
                policy, policy, reference, batch, config, class_weights, tokenizer.pad_token_id
            )
            totals["loss"] += float(loss) * len(chunk)
            for name in totals:
                if name in stats:
                    totals[name] += float(stats[name]) * (len(chunk) if name in ("z0", "z0_raw") else 1)
        logps = policy(**batch["matched"])[0]
        logps_desirable += logps[batch["is_desirable"]].tolist()
        logps_undesirable += logps[~batch["is_desirable"]].tolist()
        if per_example_path is not None:
            per_example += _per_example_rows(chunk, logps, batch, stats["z0"], beta, class_weights)

    n = len(examples)
    result = {
        "model": str(model_dir),
        "data": str(data_path),
        "n_examples": n,
        "n_desirable": len(logps_desirable),
        "n_undesirable": len(logps_undesirable),
        "logps_desirable": sum(logps_desirable) / len(logps_desirable) if logps_desirable else None,
        "logps_undesirable": sum(logps_undesirable) / len(logps_undesirable) if logps_undesirable else None,
        "reference": (f"{reference_dir} (adapter disabled)" if adapter else reference_dir),
        "beta": beta,
        **class_weights,
    }
    if reference is None:
        result["note"] = "full weights without a known reference: pass --reference BASE_DIR for loss and rewards"
        return result
    reward_desirable = totals["desirable_reward_sum"] / totals["desirable_count"] if totals["desirable_count"] else None
    reward_undesirable = (
        totals["undesirable_reward_sum"] / totals["undesirable_count"] if totals["undesirable_count"] else None
    )
    if per_example_path is not None:
        out = Path(per_example_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in sorted(per_example, key=lambda r: r["index"])))
        os.replace(temporary, out)
        result["per_example"] = str(out)
    result.update(
        loss=totals["loss"] / n,
        z0=totals["z0"] / n,
        z0_raw=totals["z0_raw"] / n,
        reward_accuracy=totals["correct_count"] / n,
        reward_desirable=reward_desirable,
        reward_undesirable=reward_undesirable,
        reward_margin=(
            reward_desirable - reward_undesirable
            if reward_desirable is not None and reward_undesirable is not None
            else None
        ),
    )
    return result


def _per_example_rows(chunk, policy_logps, batch, z0, beta, class_weights) -> list[dict]:
    """Each example of a microbatch: implied reward, z0, reward-accuracy correctness and own KTO loss
    (the engine's loss function on a batch of one, so the formula is the trainer's)."""
    rows = []
    reference_logps = batch["reference_matched"]
    for position, index in enumerate(chunk):
        desirable = batch["is_desirable"][position : position + 1]
        loss, stats = kto_loss.kto_loss(
            policy_logps[position : position + 1],
            reference_logps[position : position + 1],
            desirable,
            z0,
            beta,
            class_weights["desirable_weight"],
            class_weights["undesirable_weight"],
        )
        rows.append(
            {
                "index": index,
                "desirable": bool(desirable.item()),
                "reward": float(policy_logps[position] - reference_logps[position]),
                "z0": float(z0),
                "correct": bool(stats["correct_count"].item()),
                "loss": float(loss),
            }
        )
    return rows


@torch.no_grad()
def score(
    model_dir: str,
    data_path: str,
    out_path: str,
    batch_size: int = 8,
    max_length: int = 1024,
    max_prompt_length: int | None = None,
    trl_compat: bool = False,
    progress: bool = False,
) -> dict:
    """For every row of ``data_path`` ({prompt, completion}, TRL standard or conversational), in
    order, write ``{"logp", "n_tokens"}`` to ``out_path``: the sum of the completion tokens'
    log-probabilities under the model and their number — the quantity the loss uses for the row
    (same tokenization, truncation and log-prob code as ``train``; fp32). The output appears only
    when complete."""
    if batch_size < 1 or max_length < 2:
        raise TrainingError("--batch-size must be at least 1 and --max-length at least 2")
    if not Path(model_dir).is_dir():
        raise TrainingError(f"--model {model_dir}: no such directory")
    tokenizer = load_tokenizer(model_dir)
    rows = kto_data.read_prompt_completion_jsonl(data_path)
    examples = kto_data.tokenize_examples(tokenizer, rows, max_prompt_length)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = SequenceLogProbs(load_causal_lm(model_dir).eval()).to(device)
    scorer.verify()
    truncation = "keep_start" if trl_compat else "keep_completion"
    # Length-sorted batches (little padding); results go back to file order.
    order = sorted(range(len(examples)), key=lambda index: kto_data.sequence_length(examples[index], max_length))
    results: list[dict | None] = [None] * len(examples)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(order), batch_size), disable=not progress, desc="scoring", unit="batch"):
        chunk = order[start : start + batch_size]
        batch = kto_data.collate(
            [(examples[i].prompt_ids, examples[i].completion_ids) for i in chunk],
            max_length,
            tokenizer.pad_token_id,
            truncation=truncation,
        )
        logps, token_counts = scorer(**{key: value.to(device) for key, value in batch.items()})
        for index, logp, count in zip(chunk, logps.tolist(), token_counts.tolist()):
            results[index] = {"logp": logp, "n_tokens": count}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    temporary.write_text("".join(json.dumps(result) + "\n" for result in results))
    os.replace(temporary, out)
    return {
        "model": str(model_dir),
        "data": str(data_path),
        "out": str(out),
        "n_rows": len(results),
        "n_tokens": sum(result["n_tokens"] for result in results),
        "logp": sum(result["logp"] for result in results),
    }
