"""Proof that each shipped accelerate config (training/kto/accelerate/) trains correctly.

    python bench/scaleout_gpu.py           one CUDA GPU: plain, DDP, FSDP full shard (full FT) and
                                           plain LoRA, FSDP + LoRA, all on one rank, bf16
    python bench/scaleout_gpu.py --tiny    CPU only: plain vs DDP on 1 process (same pairs, same loss),
                                           DDP on 2 gloo processes vs plain on the same global batch, and
                                           FSDP full shard and FSDP + LoRA on 2 gloo processes vs DDP
                                           (through training.kto.cpu_fsdp: accelerate will not run
                                           FSDP on CPU by itself)

Each run is the engine's CLI in a fresh process (a few steps, a small random Llama); a config
passes when its exit code is 0, its world size is the one asked for, final/ loads and gives
finite logits, and its per-step losses match the plain run's to --tolerance (1e-3 by default,
what bf16 allows). Ends with one JSON line; exit code 1 when any config failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, save_random_model, write_synthetic_kto  # noqa: E402

from training.kto.distributed import free_port

CONFIG_DIR = REPO_ROOT / "training" / "kto" / "accelerate"


def _engine(model: str, data: str, out: Path, per_device: int, steps: int, extra: list[str], entry: str) -> list[str]:
    return [
        "-m",
        entry,
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--per-device-train-batch-size",
        str(per_device),
        "--gradient-accumulation-steps",
        "2",
        "--max-length",
        "64",
        "--learning-rate",
        "1e-4",
        "--warmup-ratio",
        "0",
        "--no-progress",
        *extra,
    ]


def _launch(config: str | None, processes: int) -> list[str]:
    if config is None:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIG_DIR / config),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
    ]


def _final_loads(final: Path, lora: bool) -> bool:
    import torch
    from transformers import AutoModelForCausalLM

    if lora:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(final))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(final))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits
    return bool(torch.isfinite(logits).all())


def run_one(
    name: str,
    config: str | None,
    processes: int,
    model: str,
    data: str,
    work: Path,
    per_device: int,
    steps: int,
    extra: list[str],
) -> dict:
    out = work / name
    # On CPU processes accelerate turns an FSDP config into DDP; cpu_fsdp keeps it FSDP.
    entry = "training.kto.cpu_fsdp" if config and config.startswith("fsdp") and processes > 1 else "training.kto"
    command = [*_launch(config, processes), *_engine(model, data, out, per_device, steps, extra, entry)]
    if config is not None:
        command += ["--expected-world-size", str(processes)]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1800)
    record = {
        "name": name,
        "config": config,
        "processes": processes,
        "exit": result.returncode,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if result.returncode != 0:
        record["error"] = result.stderr[-1500:]
        return record
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    record["losses"] = [row["loss"] for row in metrics]
    recorded = json.loads((out / "config.json").read_text())
    record["world_size"] = recorded["world_size"]
    record["distributed_type"] = recorded.get("distributed_type")
    record["final_loads"] = _final_loads(out / "final", "--lora" in extra)
    return record


def judge(record: dict, baseline: dict, tolerance: float) -> dict:
    if record["exit"] != 0 or baseline["exit"] != 0:
        record["ok"] = False
        return record
    differences = [abs(a - b) for a, b in zip(record["losses"], baseline["losses"])]
    record["compared_with"] = baseline["name"]
    record["max_loss_difference"] = max(differences) if differences else math.inf
    record["ok"] = (
        len(record["losses"]) == len(baseline["losses"])
        and record["max_loss_difference"] <= tolerance
        and record["world_size"] == record["processes"]
        and (record["config"] is None or record["config"].startswith("fsdp") == (record["distributed_type"] == "FSDP"))
        and record["final_loads"]
    )
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU only: DDP and FSDP on 1 and 2 gloo processes")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--work", default=None, help="directory for models and runs (default: a new temporary one)")
    args = parser.parse_args()

    import tempfile

    import torch

    work = Path(args.work or tempfile.mkdtemp(prefix="scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    model = save_random_model(work / "model", "tiny")
    data = write_synthetic_kto(work / "data.jsonl", 256, (8, 40), (4, 24))
    steps = args.steps
    records = []
    if args.tiny:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        fp32 = ["--bf16", "no"]
        plain = run_one("plain", None, 1, model, data, work, 4, steps, fp32)
        records.append(plain)
        records.append(judge(run_one("ddp-1", "ddp.yaml", 1, model, data, work, 4, steps, fp32), plain, args.tolerance))
        # Two processes build their mismatched pairs locally, so compare on a loss without them.
        plain_z0 = run_one("plain-z0-zero", None, 1, model, data, work, 4, steps, [*fp32, "--z0-zero"])
        records.append(plain_z0)
        ddp_2 = judge(
            run_one("ddp-2", "ddp.yaml", 2, model, data, work, 2, steps, [*fp32, "--z0-zero"]), plain_z0, args.tolerance
        )
        records.append(ddp_2)
        # FSDP on the same two processes, mismatched pass included, against DDP (same local pairs).
        ddp_z0 = run_one("ddp-2-z0", "ddp.yaml", 2, model, data, work, 2, steps, fp32)
        records.append(ddp_z0)
        records.append(
            judge(
                run_one("fsdp-full-shard-2", "fsdp_full_shard.yaml", 2, model, data, work, 2, steps, fp32),
                ddp_z0,
                args.tolerance,
            )
        )
        # bf16, what a GPU run uses: FSDP's gathered weights and casts against DDP's, to bf16's tolerance.
        ddp_bf16 = run_one("ddp-2-bf16", "ddp.yaml", 2, model, data, work, 2, steps, ["--bf16", "yes"])
        records.append(ddp_bf16)
        records.append(
            judge(
                run_one(
                    "fsdp-full-shard-2-bf16", "fsdp_full_shard.yaml", 2, model, data, work, 2, steps, ["--bf16", "yes"]
                ),
                ddp_bf16,
                args.tolerance,
            )
        )
        ddp_lora = run_one("ddp-2-lora", "ddp.yaml", 2, model, data, work, 2, steps, [*fp32, "--lora"])
        records.append(ddp_lora)
        records.append(
            judge(
                run_one("fsdp-lora-2", "fsdp_lora.yaml", 2, model, data, work, 2, steps, [*fp32, "--lora"]),
                ddp_lora,
                args.tolerance,
            )
        )
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; run with --tiny for the CPU checks", file=sys.stderr)
            return 2
        bf16 = ["--bf16", "yes"]
        plain = run_one("plain", None, 1, model, data, work, 4, steps, bf16)
        records.append(plain)
        for name, config in (("ddp", "ddp.yaml"), ("fsdp-full-shard", "fsdp_full_shard.yaml")):
            records.append(judge(run_one(name, config, 1, model, data, work, 4, steps, bf16), plain, args.tolerance))
        plain_lora = run_one("plain-lora", None, 1, model, data, work, 4, steps, [*bf16, "--lora"])
        records.append(plain_lora)
        records.append(
            judge(
                run_one("fsdp-lora", "fsdp_lora.yaml", 1, model, data, work, 4, steps, [*bf16, "--lora"]),
                plain_lora,
                args.tolerance,
            )
        )
    judged = [record for record in records if "ok" in record]
    summary = {
        "mode": "tiny-cpu" if args.tiny else f"cuda:{torch.cuda.get_device_name(0)}",
        "torch": torch.__version__,
        "steps": steps,
        "tolerance": args.tolerance,
        "all_ok": all(record["ok"] for record in judged) and all(record["exit"] == 0 for record in records),
        "runs": records,
    }
    print(json.dumps(summary), flush=True)
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
