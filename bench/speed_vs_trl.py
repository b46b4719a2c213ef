"""Prospect's KTO trainer against TRL's KTOTrainer, in one invocation, on the same model, data,
batch size, effective batch, epochs, schedule, precision, maximum length, gradient checkpointing
setting and reference handling.

Model (default): a randomly initialised 4-layer d256 Llama with a 32000-row embedding on the
byte-level BPE tokenizer of the real-tokenizer fixtures (training/kto/fixtures.py); data: words
of the fixture corpus, lengths drawn in tokens. Scenarios:
  full   full fine-tuning, reference log-probs precomputed by both (TRL: precompute_ref_log_probs=True)
  lora   LoRA (r=16, all linear layers), reference = the base with the adapter disabled, live, in both
  long   full fine-tuning on long prompts (400-900 tokens) with short completions (4-24)
  system full fine-tuning, the full scenario's prompts after one 256-token system prompt that every
         prompt begins with (a product's); not in the default set: --scenarios system

Each run is a fresh subprocess (peak memory = that process's peak RSS on CPU, or
torch.cuda.max_memory_allocated on GPU); the trainers take turns (with --repeats N the order
alternates and the median time counts). Throughput is end to end: model load, tokenization,
reference pass, training loop and saving, with the same example/token counts for both.

    python bench/speed_vs_trl.py            # CPU defaults: 512 examples, 8 x 4 accumulation (~30-60 min on 2 cores)
    python bench/speed_vs_trl.py --quick    # sanity run: 96 examples (a few minutes)
    python bench/speed_vs_trl.py --engine-options '{"token_budget": 0}'   # one engine lever off
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
from _common import count_tokens, measure, save_random_model, write_synthetic_kto_words  # noqa: E402

DATASETS = {
    # (prompt tokens, completion tokens)
    "full": ((32, 160), (16, 96)),
    "lora": ((32, 160), (16, 96)),
    "long": ((400, 900), (4, 24)),
    "system": ((32, 160), (16, 96)),
}
SYSTEM_TOKENS = {"system": 256}  # a system prompt every prompt of the scenario begins with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kind", default="bpe-llama", help="bpe-llama | cpu-small | tiny | qwen2.5-0.5b")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=5e-6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scenarios", default="full,lora,long")
    parser.add_argument("--repeats", type=int, default=1, help="runs per trainer, in alternating turns")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both trainers")
    parser.add_argument("--engine-options", default="{}", help="JSON of extra TrainConfig fields for Prospect")
    parser.add_argument("--skip-trl", action="store_true", help="Prospect only (lever measurements)")
    parser.add_argument("--quick", action="store_true", help="sanity run: 96 examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.examples = 96
    engine_options = json.loads(args.engine_options)

    workdir = Path(tempfile.mkdtemp(prefix="prospect-speed-"))
    try:
        model = save_random_model(workdir / "model", args.model_kind, seed=args.seed)
        results = {}
        for scenario in args.scenarios.split(","):
            prompt_tokens, completion_tokens = DATASETS[scenario]
            data = write_synthetic_kto_words(
                workdir / f"{scenario}.jsonl",
                model,
                args.examples,
                prompt_tokens,
                completion_tokens,
                seed=args.seed,
                system_tokens=SYSTEM_TOKENS.get(scenario, 0),
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
                gradient_checkpointing=args.gradient_checkpointing,
                bf16="auto",
            )
            trials: dict[str, list[dict]] = {"prospect": [], "trl": []}
            for repeat in range(args.repeats):
                order = ["prospect", "trl"] if repeat % 2 == 0 else ["trl", "prospect"]
                for name in order:
                    if name == "trl" and args.skip_trl:
                        continue
                    spec = dict(base, out=str(workdir / f"{scenario}-{name}-{repeat}"))
                    if name == "prospect":
                        spec["engine_options"] = engine_options
                    trials[name].append(measure(name, spec, args.threads))
                    shutil.rmtree(Path(data + ".prospect-ref"), ignore_errors=True)  # every run computes its own
            runs = {name: _median_run(attempts) for name, attempts in trials.items() if attempts}
            for run in runs.values():
                if "error" not in run:
                    run["examples_per_s"] = examples / run["seconds"]
                    run["tokens_per_s"] = tokens / run["seconds"]
            summary = {"runs": runs, "examples": examples, "tokens": tokens}
            prospect, trl = runs["prospect"], runs.get("trl", {"error": "skipped"})
            if "error" not in prospect and "error" not in trl:
                summary["throughput_ratio"] = prospect["examples_per_s"] / trl["examples_per_s"]
                summary["peak_mem_ratio"] = prospect["peak_memory_mb"] / trl["peak_memory_mb"]
                summary["first_loss_abs_diff"] = abs(prospect["losses"][0] - trl["losses"][0])
                summary["mean_loss"] = {
                    "prospect": statistics.fmean(prospect["losses"]),
                    "trl": statistics.fmean(trl["losses"]),
                }
                summary["final_loss"] = {"prospect": prospect["losses"][-1], "trl": trl["losses"][-1]}
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
        "lora_throughput_ratio_vs_trl": ratio("lora", "throughput_ratio"),
        "lora_peak_mem_ratio_vs_trl": ratio("lora", "peak_mem_ratio"),
        "long_prompt_throughput_ratio_vs_trl": ratio("long", "throughput_ratio"),
        "long_prompt_peak_mem_ratio_vs_trl": ratio("long", "peak_mem_ratio"),
        "system_prompt_throughput_ratio_vs_trl": ratio("system", "throughput_ratio"),
        "system_prompt_peak_mem_ratio_vs_trl": ratio("system", "peak_mem_ratio"),
        "first_loss_abs_diff_max": max(
            (r["first_loss_abs_diff"] for r in results.values() if "first_loss_abs_diff" in r), default=None
        ),
        "examples": args.examples,
        "batch": f"{args.batch_size} x {args.grad_accum} accumulation",
        "gradient_checkpointing": args.gradient_checkpointing,
        "engine_options": engine_options,
        "seconds": {
            scenario: {name: round(run["seconds"], 1) for name, run in r["runs"].items() if "seconds" in run}
            for scenario, r in results.items()
        },
        "peak_memory_mb": {
            scenario: {name: round(run["peak_memory_mb"], 1) for name, run in r["runs"].items() if "seconds" in run}
            for scenario, r in results.items()
        },
        "tokens_per_s": {
            scenario: {name: round(run["tokens_per_s"], 1) for name, run in r["runs"].items() if "tokens_per_s" in run}
            for scenario, r in results.items()
        },
        # Where Prospect's time went per scenario (data, model, reference, setup, loop, save).
        "prospect_phase_seconds": {
            scenario: r["runs"]["prospect"].get("phase_seconds")
            for scenario, r in results.items()
            if "prospect" in r["runs"]
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


def _median_run(runs: list[dict]) -> dict:
    """The run with the median time (errors win: they must be seen)."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    return sorted(runs, key=lambda run: run["seconds"])[len(runs) // 2]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
