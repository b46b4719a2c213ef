"""Prospect's KTO trainer against TRL's KTOTrainer, in one invocation, on the same model, data,
batch size, epochs, schedule and reference handling.

Scenarios:
  full   full fine-tuning, reference log-probs precomputed by both (TRL: precompute_ref_log_probs=True);
         then a second Prospect run that reuses its cached reference log-probs
  lora   LoRA (r=16, all linear layers), reference = the base with the adapter disabled, live, in both
  long   full fine-tuning on long prompts with short completions (the common chat case)

Each run is a fresh subprocess (peak memory = that process's peak RSS on CPU, or
torch.cuda.max_memory_allocated on GPU). Throughput is end to end: model load, tokenization,
reference pass, training loop and saving, with the same example/token counts for both.
Loss trajectories differ in data order (Prospect reshuffles and length-buckets; TRL samples
sequentially), so the first loss (identical: policy = reference) and the mean over the run are compared.

    python bench/speed_vs_trl.py                       # CPU defaults, a few minutes
    python bench/speed_vs_trl.py --examples 512 --batch-size 8 --scenarios full,lora,long
Ends with one JSON line: {"bench": "speed_vs_trl", "throughput_ratio_vs_trl": ..., "peak_mem_ratio_vs_trl": ...}
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import count_tokens, measure, save_random_model, write_synthetic_kto  # noqa: E402

DATASETS = {
    # (prompt chars, completion chars): characters = tokens with the character tokenizer
    "full": ((32, 160), (16, 96)),
    "lora": ((32, 160), (16, 96)),
    "long": ((400, 900), (4, 24)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kind", default="cpu-small", help="cpu-small | tiny | qwen2.5-0.5b")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenarios", default="full,lora,long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="prospect-speed-"))
    try:
        model = save_random_model(workdir / "model", args.model_kind, seed=args.seed)
        results = {}
        for scenario in args.scenarios.split(","):
            prompt_chars, completion_chars = DATASETS[scenario]
            data = write_synthetic_kto(
                workdir / f"{scenario}.jsonl", args.examples, prompt_chars, completion_chars, seed=args.seed
            )
            tokens = count_tokens(model, data, args.max_length) * args.epochs
            examples = args.examples * args.epochs
            base = dict(
                model=model,
                data=data,
                batch_size=args.batch_size,
                grad_accum=args.grad_accum,
                epochs=args.epochs,
                max_length=args.max_length,
                learning_rate=args.learning_rate,
                seed=args.seed,
                lora=scenario == "lora",
                reference="copy" if scenario == "lora" else "precompute",
            )
            runs = {
                "prospect": measure("prospect", dict(base, out=str(workdir / f"{scenario}-prospect")), args.threads),
                "trl": measure("trl", dict(base, out=str(workdir / f"{scenario}-trl")), args.threads),
            }
            if scenario == "full":
                runs["prospect_cached_reference"] = measure(
                    "prospect", dict(base, out=str(workdir / f"{scenario}-prospect-cached")), args.threads
                )
            for run in runs.values():
                if "error" not in run:
                    run["examples_per_s"] = examples / run["seconds"]
                    run["tokens_per_s"] = tokens / run["seconds"]
            summary = {"runs": runs, "examples": examples, "tokens": tokens}
            prospect, trl = runs["prospect"], runs["trl"]
            if "error" not in prospect and "error" not in trl:
                summary["throughput_ratio"] = prospect["examples_per_s"] / trl["examples_per_s"]
                summary["peak_mem_ratio"] = prospect["peak_memory_mb"] / trl["peak_memory_mb"]
                summary["first_loss_abs_diff"] = abs(prospect["losses"][0] - trl["losses"][0])
                summary["mean_loss"] = {
                    "prospect": statistics.fmean(prospect["losses"]),
                    "trl": statistics.fmean(trl["losses"]),
                }
                summary["final_loss"] = {"prospect": prospect["losses"][-1], "trl": trl["losses"][-1]}
                if "prospect_cached_reference" in runs and "error" not in runs["prospect_cached_reference"]:
                    summary["cached_throughput_ratio"] = (
                        runs["prospect_cached_reference"]["examples_per_s"] / trl["examples_per_s"]
                    )
            results[scenario] = summary
            print(f"--- {scenario}", file=sys.stderr)
            for name, run in runs.items():
                if "error" in run:
                    print(f"{name:28s} ERROR {run['error'][-500:]}", file=sys.stderr)
                else:
                    print(
                        f"{name:28s} {run['examples_per_s']:8.2f} ex/s {run['tokens_per_s']:10.1f} tok/s "
                        f"peak {run['peak_memory_mb']:8.1f} MiB  {run['seconds']:7.1f} s  "
                        f"loss first {run['losses'][0]:.4f} mean {statistics.fmean(run['losses']):.4f}",
                        file=sys.stderr,
                    )
        (Path(__file__).resolve().parent / "out").mkdir(exist_ok=True)
        (Path(__file__).resolve().parent / "out" / "speed_vs_trl.json").write_text(
            json.dumps({"args": vars(args), "results": results}, indent=2, default=str)
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def ratio(scenario, key):
        value = results.get(scenario, {}).get(key)
        return round(value, 3) if value is not None else None

    headline = {
        "bench": "speed_vs_trl",
        "device": "cuda" if _cuda() else "cpu",
        "model": args.model_kind,
        "throughput_ratio_vs_trl": ratio("full", "throughput_ratio"),
        "peak_mem_ratio_vs_trl": ratio("full", "peak_mem_ratio"),
        "cached_reference_throughput_ratio_vs_trl": ratio("full", "cached_throughput_ratio"),
        "lora_throughput_ratio_vs_trl": ratio("lora", "throughput_ratio"),
        "lora_peak_mem_ratio_vs_trl": ratio("lora", "peak_mem_ratio"),
        "long_prompt_throughput_ratio_vs_trl": ratio("long", "throughput_ratio"),
        "long_prompt_peak_mem_ratio_vs_trl": ratio("long", "peak_mem_ratio"),
        "first_loss_abs_diff_max": max(
            (r["first_loss_abs_diff"] for r in results.values() if "first_loss_abs_diff" in r), default=None
        ),
        "tokens_per_s": {
            scenario: {name: round(run["tokens_per_s"], 1) for name, run in r["runs"].items() if "tokens_per_s" in run}
            for scenario, r in results.items()
        },
        "errors": {
            f"{scenario}/{name}": run["error"][-300:]
            for scenario, r in results.items()
            for name, run in r["runs"].items()
            if "error" in run
        }
        or None,
    }
    print(json.dumps(headline))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
