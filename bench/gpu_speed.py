"""GPU throughput and model FLOPs utilisation: Prospect vs TRL's KTOTrainer on a randomly
initialised model shaped like Qwen2.5-0.5B (config built locally, no hub), bf16, full fine-tuning
with precomputed reference log-probs in both, same data / batch / epochs.

    python bench/gpu_speed.py                 # on a GPU machine after `pip install -r requirements-dev.txt` (≈ 5 min)
    python bench/gpu_speed.py --model-kind qwen2.5-1.5b
    python bench/gpu_speed.py --tiny          # CPU smoke test: tiny model, a few examples

MFU counts the same model FLOPs for both trainers (the algorithm is the same): 6·N per trained
token (forward + backward of the policy on matched sequences) and 2·N per token of each no-grad
forward (policy on mismatched pairs; reference on matched and mismatched), N = parameter count;
attention score FLOPs are left out. Time is end to end (load, tokenize, reference pass, loop,
save), divided by the H100/H200 dense bf16 peak of 989 TFLOPS.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kind", default="qwen2.5-0.5b", help="qwen2.5-0.5b | qwen2.5-1.5b")
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--prompt-chars", default="200,600")
    parser.add_argument("--completion-chars", default="40,200")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny model, 32 examples")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--timeout", type=float, default=600, help="per trainer run, seconds")
    args = parser.parse_args()
    if args.tiny:
        args.model_kind, args.examples, args.batch_size, args.grad_accum = "tiny", 32, 4, 1
        args.prompt_chars, args.completion_chars = "20,60", "5,20"

    import torch

    on_gpu = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="prospect-gpu-"))
    try:
        model = save_random_model(workdir / "model", args.model_kind)
        parameters = _parameter_count(model)
        prompt_chars = tuple(int(v) for v in args.prompt_chars.split(","))
        completion_chars = tuple(int(v) for v in args.completion_chars.split(","))
        data = write_synthetic_kto(workdir / "data.jsonl", args.examples, prompt_chars, completion_chars)
        tokens = count_tokens(model, data, args.max_length)
        # matched: 6N (grad) + 2N (reference); mismatched: 2N (policy, no grad) + 2N (reference).
        # Mismatched sequences have about the same length on average as matched ones.
        model_flops = tokens * parameters * (6 + 2 + 2 + 2)
        spec = dict(
            model=model,
            data=data,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            epochs=1.0,
            max_length=args.max_length,
            learning_rate=5e-6,
            seed=0,
            lora=False,
            reference="precompute",
        )
        runs = {
            "prospect": measure("prospect", dict(spec, out=str(workdir / "prospect")), threads=8, timeout=args.timeout)
        }
        if not args.skip_trl:
            runs["trl"] = measure("trl", dict(spec, out=str(workdir / "trl")), threads=8, timeout=args.timeout)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report = {
        "bench": "gpu_speed",
        "device": device_name,
        "model": args.model_kind,
        "parameters": parameters,
        "examples": args.examples,
        "tokens": tokens,
    }
    for name, run in runs.items():
        if "error" in run:
            report[f"{name}_error"] = run["error"][-1500:]
            continue
        report[f"{name}_tokens_per_s"] = round(tokens / run["seconds"], 1)
        report[f"{name}_examples_per_s"] = round(args.examples / run["seconds"], 2)
        report[f"{name}_seconds"] = round(run["seconds"], 1)
        report[f"{name}_peak_memory_mb"] = round(run["peak_memory_mb"], 1)
        report[f"{name}_mfu"] = round(model_flops / run["seconds"] / PEAK_BF16_FLOPS, 4) if on_gpu else None
        report[f"{name}_final_loss"] = run["losses"][-1] if run["losses"] else None
        if name == "prospect":
            report["prospect_loop_seconds"] = run.get("loop_seconds")
        print(
            f"{name:10s} {tokens / run['seconds']:10.1f} tok/s  {run['seconds']:7.1f} s  "
            f"peak {run['peak_memory_mb']:9.1f} MiB",
            file=sys.stderr,
        )
    if "prospect_tokens_per_s" in report and "trl_tokens_per_s" in report:
        report["throughput_ratio_vs_trl"] = round(report["prospect_tokens_per_s"] / report["trl_tokens_per_s"], 3)
        report["peak_mem_ratio_vs_trl"] = round(report["prospect_peak_memory_mb"] / report["trl_peak_memory_mb"], 3)
    report["total_minutes"] = round((time.perf_counter() - started) / 60, 2)
    print(json.dumps(report))


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
