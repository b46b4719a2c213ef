"""Held-out accuracy on the demo task: SFT (the demo model) vs SFT+KTO, the paper's baselines on the
same data (DPO and SLiC on its paired subset, offline PPO with ±1 rewards, CSFT, more SFT), the KTO
ablations, and the paper's imbalance test (drop 90% of desirable examples, automatic λ) against DPO
on the full pairs. Several seeds; mean and spread.

Per seed: sample 2 completions for each of 300 train prompts from the demo model (temperature 1),
label them with the simulated annotator, train every method on that same file with the same
settings, and measure greedy exact-match accuracy on the 200 held-out prompts.

    python bench/quality.py                 # 3 seeds, ≈ 15-20 min on 2 CPU cores
    python bench/quality.py --seeds 0,1,2,3,4 --learning-rate 1e-4
Ends with one JSON line: {"bench": "quality", ...}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

METHODS = [
    # name, loss, data variant, class weights
    ("kto", "kto", "full", "auto"),
    ("dpo", "dpo", "full", "auto"),
    ("slic", "slic", "full", "auto"),
    ("ppo_offline", "ppo_offline", "full", "auto"),
    ("csft", "csft", "full", "auto"),
    ("sft_on_desirable", "sft", "full", "auto"),
    ("kto_no_z0", "no_z0", "full", "auto"),
    ("kto_concave", "concave", "full", "auto"),
    ("kto_risk_neutral", "risk_neutral", "full", "auto"),
    ("kto_reference_free", "reference_free", "full", "auto"),
    ("kto_imbalanced_auto_lambda", "kto", "imbalanced", "auto"),
    ("kto_imbalanced_unit_lambda", "kto", "imbalanced", "unit"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--prompts", type=int, default=300, help="train prompts sampled per seed")
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default=",".join(name for name, *_ in METHODS))
    args = parser.parse_args()

    import torch

    from training.kto import defaults
    from training.kto.demo import demo_accuracy, demo_prompts
    from training.kto.demo_feedback import simulated_feedback, write_jsonl
    from training.kto.testing import get_or_build_demo_model
    from training.kto.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    demo_model = get_or_build_demo_model()
    heldout = demo_prompts(200, seed=0, split="heldout")
    sft_accuracy = demo_accuracy(demo_model, heldout)
    chosen = [method for method in METHODS if method[0] in args.methods.split(",")]
    accuracies: dict[str, list[float]] = {name: [] for name, *_ in chosen}
    details = []
    workdir = Path(tempfile.mkdtemp(prefix="prospect-quality-"))
    try:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows = simulated_feedback(
                demo_model, args.prompts, seed=seed + 1, samples_per_prompt=args.samples_per_prompt
            )
            full = write_jsonl(rows, workdir / f"full-{seed}.jsonl")
            # The paper's imbalance test: drop 90% of the desirable examples, keep all undesirable ones.
            rng = random.Random(seed)
            imbalanced_rows = [row for row in rows if not row["label"] or rng.random() < 0.1]
            imbalanced = write_jsonl(imbalanced_rows, workdir / f"imbalanced-{seed}.jsonl")
            files = {"full": full, "imbalanced": imbalanced}
            seed_detail = {
                "seed": seed,
                "n_desirable": sum(r["label"] for r in rows),
                "n_undesirable": sum(not r["label"] for r in rows),
                "imbalanced_n_desirable": sum(r["label"] for r in imbalanced_rows),
                "runs": {},
            }
            for name, loss, variant, weights in chosen:
                summary = train(
                    TrainConfig(
                        model=demo_model,
                        data=files[variant],
                        out=str(workdir / f"{name}-{seed}"),
                        loss=loss,
                        beta=args.beta,
                        learning_rate=args.learning_rate,
                        per_device_train_batch_size=args.batch_size,
                        gradient_accumulation_steps=args.grad_accum,
                        num_train_epochs=args.epochs,
                        max_length=32,
                        desirable_weight="auto" if weights == "auto" else 1.0,
                        undesirable_weight="auto" if weights == "auto" else 1.0,
                        # The schedule the loop uses (explicit: the engine's own defaults are TRL's).
                        warmup_ratio=defaults.LOOP_WARMUP_RATIO,
                        gradient_checkpointing=False,
                        save_steps=0,
                        seed=seed,
                        progress=False,
                        logging_steps=10,
                    )
                )
                accuracy = demo_accuracy(summary["final"], heldout)
                accuracies[name].append(accuracy)
                seed_detail["runs"][name] = {
                    "accuracy": accuracy,
                    "steps": summary["steps"],
                    "desirable_weight": round(summary["desirable_weight"], 3),
                    "undesirable_weight": round(summary["undesirable_weight"], 3),
                }
                print(
                    f"seed {seed} {name:28s} held-out accuracy {accuracy:.3f} "
                    f"(steps {summary['steps']}, λ_D {summary['desirable_weight']:.2f}, "
                    f"λ_U {summary['undesirable_weight']:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
                shutil.rmtree(workdir / f"{name}-{seed}", ignore_errors=True)
            details.append(seed_detail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def summary_of(values):
        return {
            "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "min": round(min(values), 4),
            "max": round(max(values), 4),
        }

    results = {name: summary_of(values) for name, values in accuracies.items() if values}
    headline = {
        "bench": "quality",
        "seeds": [int(s) for s in args.seeds.split(",")],
        "heldout_prompts": len(heldout),
        "sft_accuracy": round(sft_accuracy, 4),
        "accuracy": results,
        "kto_ge_dpo": _ge(results, "kto", "dpo"),
        "kto_ge_ppo_offline": _ge(results, "kto", "ppo_offline"),
        "kto_ge_slic": _ge(results, "kto", "slic"),
        "kto_ge_csft": _ge(results, "kto", "csft"),
        "imbalanced_kto_auto_lambda_ge_dpo_full_pairs": _ge(results, "kto_imbalanced_auto_lambda", "dpo"),
        "kto_improvement_over_sft": (round(results["kto"]["mean"] - sft_accuracy, 4) if "kto" in results else None),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    (Path(__file__).resolve().parent / "out").mkdir(exist_ok=True)
    (Path(__file__).resolve().parent / "out" / "quality.json").write_text(
        json.dumps({"args": vars(args), "headline": headline, "per_seed": details}, indent=2)
    )
    print(json.dumps(headline))


def _ge(results: dict, first: str, second: str):
    if first in results and second in results:
        return results[first]["mean"] >= results[second]["mean"]
    return None


if __name__ == "__main__":
    main()
