"""GPU throughput and model FLOPs utilisation: Prospect vs TRL's KTOTrainer on randomly
initialised models (configs built locally, no hub), bf16 autocast on fp32 weights in both, same
data / batch / accumulation / epochs / gradient checkpointing setting:
  full   Qwen2.5-0.5B shape, full fine-tuning, reference log-probs precomputed by both
  lora   Qwen2.5-7B shape, LoRA r=16 on all linear layers, reference = adapter disabled (live) in both

    python bench/gpu_speed.py                 # on a CUDA machine after `pip install -r requirements-dev.txt`
    python bench/gpu_speed.py --scenarios full --engine-options '{"token_budget": 16384}'
    python bench/gpu_speed.py --tiny          # CPU smoke test: tiny model, a few examples, both scenarios
    python bench/gpu_speed.py --scenarios full \
        --variant compile='{"compile_backend": "inductor"}' --variant checkpointing='{"gradient_checkpointing": true}'

The engine runs with its CUDA defaults: bf16, fused AdamW, token-budget forward calls
(defaults.TOKEN_BUDGET_CUDA tokens, whole microbatches per call), padding-free packing and the
chunked LM head; TRL with its own (adamw_torch_fused, padded microbatches).
MFU counts only real (non-pad) tokens and the same model FLOPs for both trainers: per token
6·N for the policy forward+backward (4·N with LoRA: no weight gradients for the frozen base), 2·N
for the policy's no-grad pass on mismatched pairs, 2·N + 2·N for the reference on matched and
mismatched sequences (precomputed or live); N = parameter count, attention score FLOPs left out.
Time is end to end (load, tokenize, reference pass, loop, save), divided by the H100/H200 dense
bf16 peak of 989 TFLOPS.
Each `--variant NAME=JSON` is one more Prospect run with those TrainConfig fields on top of
--engine-options (one lever at a time), reported as prospect_NAME_* with its own ratio vs the same
TRL run. Every Prospect run also reports where its time went (phase_seconds: data, model,
reference, setup, loop, save) and the no-grad passes' share of the loop (no_grad_share: z0's
mismatched pass, a live reference). A variant with {"profile_steps": N} also reports its torch.profiler
summary (prospect_NAME_profile: busiest operators, kernel launches per step, the GPU's busy share of
the profiled steps' wall time; training/kto/profiling.py).
Ends with one JSON line: {"bench": "gpu_speed", ...}. If TRL fails, Prospect's figures and the error are printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import count_tokens, measure, save_random_model, write_synthetic_kto  # noqa: E402

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16
SCENARIOS = {
    # name: (model kind, lora, reference, FLOPs per token / N)
    "full": ("qwen2.5-0.5b", False, "precompute", 6 + 2 + 2 + 2),
    "lora": ("qwen2.5-7b", True, "copy", 4 + 2 + 2 + 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="full,lora")
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--lora-examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--prompt-chars", default="200,600")
    parser.add_argument("--completion-chars", default="40,200")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for both trainers")
    parser.add_argument("--engine-options", default="{}", help="JSON of extra TrainConfig fields for Prospect")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="one more Prospect run with these TrainConfig fields on top of --engine-options (repeatable)",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 32 examples")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument(
        "--warmup",
        action="store_true",
        help="one untimed run on a tiny model first, so the first timed run does not pay the cold machine "
        "(libraries read from disk, GPU clocks rising)",
    )
    parser.add_argument("--timeout", type=float, default=900, help="per trainer run, seconds")
    args = parser.parse_args()
    engine_options = json.loads(args.engine_options)
    variants = {"prospect": engine_options}
    for variant in args.variant:
        name, _, options = variant.partition("=")
        if not name.isidentifier() or name in variants or not options:
            parser.error(f"--variant {variant!r}: expected NAME=JSON with a new NAME made of letters, digits and _")
        variants[f"prospect_{name}"] = dict(engine_options, **json.loads(options))
    if args.tiny:
        args.examples = args.lora_examples = 32
        args.batch_size, args.grad_accum = 4, 2
        args.prompt_chars, args.completion_chars = "20,60", "5,20"

    import torch

    on_gpu = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    threads = 8 if on_gpu else 1  # host threads; on a busy CPU more threads mostly wait for each other
    started = time.perf_counter()
    report = {"bench": "gpu_speed", "device": device_name, "torch": torch.__version__, "tiny": args.tiny}
    workdir = Path(tempfile.mkdtemp(prefix="prospect-gpu-"))
    try:
        if args.warmup:
            tiny = save_random_model(workdir / "model-warmup", "tiny")
            warm_data = write_synthetic_kto(workdir / "warmup.jsonl", 32, (20, 60), (5, 20))
            warm_spec = dict(model=tiny, data=warm_data, batch_size=4, grad_accum=2, epochs=1.0, max_length=128)
            warm_spec.update(learning_rate=5e-6, seed=0, lora=False, reference="precompute")
            measure("prospect", dict(warm_spec, out=str(workdir / "warmup-out")), threads=threads, timeout=args.timeout)
        for scenario in args.scenarios.split(","):
            kind, lora, reference, flops_per_token = SCENARIOS[scenario]
            kind = "tiny" if args.tiny else kind
            examples = args.lora_examples if lora else args.examples
            model = save_random_model(workdir / f"model-{scenario}", kind)
            parameters = _parameter_count(model)
            prompt_chars = tuple(int(v) for v in args.prompt_chars.split(","))
            completion_chars = tuple(int(v) for v in args.completion_chars.split(","))
            data = write_synthetic_kto(workdir / f"{scenario}.jsonl", examples, prompt_chars, completion_chars)
            tokens = count_tokens(model, data, args.max_length)  # real tokens only, no padding
            model_flops = tokens * parameters * flops_per_token
            spec = dict(
                model=model,
                data=data,
                batch_size=args.batch_size,
                grad_accum=args.grad_accum,
                epochs=1.0,
                max_length=args.max_length,
                learning_rate=5e-6,
                seed=0,
                lora=lora,
                reference=reference,
                gradient_checkpointing=args.gradient_checkpointing,
            )
            prefix = "" if scenario == "full" else f"{scenario}_"
            report[f"{prefix}model"] = kind
            report[f"{prefix}parameters"] = parameters
            report[f"{prefix}examples"] = examples
            report[f"{prefix}tokens"] = tokens
            # The default first, then TRL, then one run per lever: a run cut off by a time limit
            # still has the comparison that matters most, and each run is reported on stderr as
            # it ends (the stdout JSON line comes only at the end).
            order = (
                ["prospect"] + ([] if args.skip_trl else ["trl"]) + [name for name in variants if name != "prospect"]
            )
            for name in order:
                if name == "trl":
                    run = measure(
                        "trl", dict(spec, out=str(workdir / f"{scenario}-trl")), threads=threads, timeout=args.timeout
                    )
                else:
                    engine_spec = dict(spec, out=str(workdir / f"{scenario}-{name}"), engine_options=variants[name])
                    run = measure("prospect", engine_spec, threads=threads, timeout=args.timeout)
                figures = _report_run(run, tokens, model_flops if on_gpu else None, include_engine=name != "trl")
                report.update({f"{prefix}{name}_{field}": value for field, value in figures.items()})
                print(json.dumps({"scenario": scenario, "run": name, **figures}), file=sys.stderr, flush=True)
            for name in variants:
                # prospect -> throughput_ratio_vs_trl (as before); prospect_compile -> compile_throughput_...
                ratio_prefix = (
                    prefix + name.removeprefix("prospect").removeprefix("_") + ("_" if name != "prospect" else "")
                )
                if f"{prefix}{name}_tokens_per_s" in report and f"{prefix}trl_tokens_per_s" in report:
                    report[f"{ratio_prefix}throughput_ratio_vs_trl"] = round(
                        report[f"{prefix}{name}_tokens_per_s"] / report[f"{prefix}trl_tokens_per_s"], 3
                    )
                    report[f"{ratio_prefix}peak_mem_ratio_vs_trl"] = round(
                        report[f"{prefix}{name}_peak_memory_mb"] / report[f"{prefix}trl_peak_memory_mb"], 3
                    )
            shutil.rmtree(workdir / f"model-{scenario}", ignore_errors=True)  # 15 GB for the 7B shape
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["engine_options"] = engine_options
    report["variants"] = {name: options for name, options in variants.items() if name != "prospect"}
    report["total_minutes"] = round((time.perf_counter() - started) / 60, 2)
    print(json.dumps(report))


def _report_run(run: dict, tokens: int, model_flops: float | None, include_engine: bool) -> dict:
    """One trainer run's figures (tokens/s over real tokens, end to end; MFU only on a GPU)."""
    if "error" in run:
        return {"error": run["error"][-1500:]}
    figures = {
        "tokens_per_s": round(tokens / run["seconds"], 1),
        "seconds": round(run["seconds"], 1),
        "peak_memory_mb": round(run["peak_memory_mb"], 1),
        "mfu": round(model_flops / run["seconds"] / PEAK_BF16_FLOPS, 4) if model_flops else None,
        "final_loss": run["losses"][-1] if run["losses"] else None,
    }
    if include_engine:
        figures.update(
            loop_seconds=run.get("loop_seconds"),
            phase_seconds=run.get("phase_seconds"),
            no_grad_share=run.get("no_grad_share"),
            speed_levers=run.get("speed_levers"),
        )
        if run.get("profile"):
            figures["profile"] = run["profile"]
        if run.get("memory_plan"):
            # What --checkpoint-policy auto chose and the peak it counted on, next to the peak measured.
            plan = run["memory_plan"]
            figures["memory_plan"] = {
                "policy": plan["policy"],
                "token_budget": plan["token_budget"],
                "limit_mb": round(plan["limit_bytes"] / 2**20, 1),
                "predicted_peak_mb": round(plan["peak_bytes"] / 2**20, 1) if plan["peak_bytes"] else None,
                # None: that policy's measuring call ran out of memory.
                "activation_bytes_per_token": {
                    k: None if v is None else round(v) for k, v in plan["activation_bytes_per_token"].items()
                },
                "activation_mb_per_call": {k: round(v / 2**20) for k, v in plan["activation_bytes_per_call"].items()},
            }
    return figures


def _parameter_count(model_dir: str) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(model_dir).glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= size
                total += count
    return total


if __name__ == "__main__":
    main()
