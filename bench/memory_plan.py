"""Does --checkpoint-policy auto count right? Its predicted peak against the peak measured.

Three Prospect runs of one shape, each in a fresh process, two optimizer steps each (the second has
AdamW's moments in memory from the start, as every later step). The first has
room for everything (auto picks no checkpointing) and reports the per-token activation bytes
it measured; the other two get memory limits just below the next cheaper policy's predicted peak, so
auto must pick elementwise, then layer. Each run reports the peak it predicted and the peak it
reached: resident memory on CPU (less the process's resident memory before training: Python,
torch, the tokenizer), allocated memory on CUDA. The differences between policies are compared
too: there the baseline cancels out.

    python bench/memory_plan.py                           # Qwen2.5-0.5B shape, fp32 on CPU (≈ 8 min)
    python bench/memory_plan.py --model-kind tiny         # smoke test (≈ 1 min)
Ends with one JSON line: {"bench": "memory_plan", "runs": {...}, ...}
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import measure, save_random_model, write_synthetic_kto  # noqa: E402

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-kind", default="qwen2.5-0.5b")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per call with gradient")
    parser.add_argument("--prompt-chars", default="150,250")
    parser.add_argument("--completion-chars", default="30,80")
    args = parser.parse_args()

    from training.kto.memory_plan import HEADROOM, peak_bytes

    workdir = Path(tempfile.mkdtemp(prefix="prospect-memory-plan-"))
    try:
        model = save_random_model(workdir / "model", args.model_kind)
        prompt_chars = tuple(int(v) for v in args.prompt_chars.split(","))
        completion_chars = tuple(int(v) for v in args.completion_chars.split(","))
        data = write_synthetic_kto(workdir / "data.jsonl", 4 * args.batch_size, prompt_chars, completion_chars)
        spec = dict(model=model, data=data, batch_size=args.batch_size, grad_accum=1, epochs=1.0, max_length=1024)
        spec.update(learning_rate=5e-6, seed=0, lora=False, reference="precompute")

        def run(name: str, limit_gib: float) -> dict:
            options = dict(gradient_checkpointing=True, checkpoint_policy="auto", memory_limit_gib=limit_gib)
            result = measure(
                "prospect", dict(spec, out=str(workdir / name), engine_options=dict(options, max_steps=2)), threads=2
            )
            if "error" in result:
                raise SystemExit(f"{name}: {result['error'][-2000:]}")
            plan = result["memory_plan"]
            figures = {
                "policy": plan["policy"],
                "limit_mib": round(plan["limit_bytes"] / MIB),
                "call_tokens": plan["call_tokens"],
                "predicted_peak_mib": round(plan["peak_bytes"] / MIB),
                "measured_peak_mib": round(result["peak_memory_mb"] - result["baseline_memory_mb"]),
            }
            figures["measured_vs_predicted"] = round(figures["measured_peak_mib"] / figures["predicted_peak_mib"], 3)
            print(f"{name}: {figures}", file=sys.stderr, flush=True)
            return figures, plan

        runs = {}
        runs["roomy"], plan = run("roomy", 1e4)
        per_token, per_call = plan["activation_bytes_per_token"], plan["activation_bytes_per_call"]

        def limit_between(policy: str, cheaper: str) -> float:
            """GiB whose usable part (less the headroom) lies halfway between two policies' predicted peaks."""
            peaks = [
                peak_bytes(plan["fixed_bytes"], per_token, per_call, p, plan["call_tokens"]) for p in (policy, cheaper)
            ]
            return sum(peaks) / 2 / (1 - HEADROOM) / 2**30

        runs["below_off"], _ = run("below_off", limit_between("off", "elementwise"))
        runs["below_elementwise"], _ = run("below_elementwise", limit_between("elementwise", "layer"))
        by_policy = {figures["policy"]: figures for figures in runs.values()}
        differences = {}
        for policy in ("elementwise", "layer"):
            if "off" in by_policy and policy in by_policy:
                differences[f"off_minus_{policy}"] = {
                    "predicted_mib": by_policy["off"]["predicted_peak_mib"] - by_policy[policy]["predicted_peak_mib"],
                    "measured_mib": by_policy["off"]["measured_peak_mib"] - by_policy[policy]["measured_peak_mib"],
                }
        report = {
            "bench": "memory_plan",
            "model": args.model_kind,
            "activation_bytes_per_token": {k: round(v) for k, v in per_token.items()},
            "activation_bytes_per_call": {k: round(v) for k, v in per_call.items()},
            "fixed_mib": round(plan["fixed_bytes"] / MIB),
            "runs": runs,
            "differences": differences,
        }
        print(json.dumps(report))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
