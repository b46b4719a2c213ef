"""`python -m training.kto {train,evaluate,score,generate,demo-model,merge-adapter,demo-accuracy}`.

Each subcommand prints one JSON line on stdout when it succeeds. On failure it prints a clear
message on stderr and exits non-zero, having written nothing (inputs are checked first).
Option names follow TRL's KTOConfig fields in kebab case where one exists.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .data import DataError
from .defaults import CHECKPOINT_POLICIES
from .loss import LOSS_TYPES, VARIANTS
from .trainer import NonFiniteError, TrainConfig, TrainingError

EXIT_USAGE_OR_DATA = 2
EXIT_NONFINITE = 3  # training diverged: too many steps in a row with a non-finite loss or gradient


def _weight(value: str) -> str | float:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.kto", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = TrainConfig(model="", data="", out="")

    train = commands.add_parser("train", help="KTO (or an ablation / baseline) on a JSONL file")
    train.add_argument("--model", required=True, help="local save_pretrained directory (or hub id where reachable)")
    train.add_argument("--data", required=True, help="KTO JSONL: {prompt, completion, label}")
    train.add_argument("--out", required=True, help="new output directory")
    train.add_argument(
        "--loss",
        choices=LOSS_TYPES,
        default=defaults.loss,
        help="; ".join(f"{name}: {variant.summary}" for name, variant in VARIANTS.items()),
    )
    train.add_argument("--beta", type=float, default=defaults.beta)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument(
        "--per-device-train-batch-size",
        type=int,
        default=defaults.per_device_train_batch_size,
        help="microbatch per process; KTO needs at least 2 (z0 from mismatched pairs)",
    )
    train.add_argument("--gradient-accumulation-steps", type=int, default=defaults.gradient_accumulation_steps)
    train.add_argument("--num-train-epochs", type=float, default=defaults.num_train_epochs)
    train.add_argument("--max-steps", type=int, default=defaults.max_steps)
    train.add_argument("--max-length", type=int, default=defaults.max_length)
    train.add_argument(
        "--max-prompt-length",
        type=int,
        default=defaults.max_prompt_length,
        help="keep only the last N prompt tokens (default: no limit besides --max-length)",
    )
    train.add_argument(
        "--desirable-weight",
        type=_weight,
        default=defaults.desirable_weight,
        help="λ_D: a number (TRL's default 1.0), or 'auto' (balance so λ_D n_D / λ_U n_U = "
        "--target-ratio when n_D/n_U lies outside the paper's [1, 3/2])",
    )
    train.add_argument("--undesirable-weight", type=_weight, default=defaults.undesirable_weight, help="λ_U")
    train.add_argument("--target-ratio", type=float, default=defaults.target_ratio)
    train.add_argument("--balance-mode", choices=("auto", "downside_first"), default=defaults.balance_mode)
    train.add_argument("--warmup-ratio", type=float, default=defaults.warmup_ratio)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--max-grad-norm", type=float, default=defaults.max_grad_norm)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter (reference = adapter disabled)")
    train.add_argument("--lora-r", type=int, default=defaults.lora_r)
    train.add_argument("--lora-alpha", type=int, default=defaults.lora_alpha)
    train.add_argument("--lora-dropout", type=float, default=defaults.lora_dropout)
    train.add_argument(
        "--reference",
        choices=("precompute", "copy"),
        default=defaults.reference,
        help="precompute: reference log-probs once, cached next to the data; copy: computed live "
        "(full FT: frozen copy; LoRA: adapter disabled)",
    )
    train.add_argument("--z0-zero", action="store_true", help="z0 = 0 (after SFT on the same data; saves a pass)")
    train.add_argument(
        "--keep-dropout",
        action="store_true",
        help="leave the model's dropout on (default: off in policy and reference, as TRL's "
        "disable_dropout; with it on, r and z0 carry dropout noise)",
    )
    train.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=defaults.gradient_checkpointing,
        help="on by default, as in TRL's KTOConfig",
    )
    train.add_argument("--bf16", choices=("auto", "yes", "no"), default=defaults.bf16)
    speed = train.add_argument_group("speed (none of these changes the numbers)")
    speed.add_argument(
        "--token-budget",
        type=int,
        default=defaults.token_budget,
        help="tokens per forward call with gradient: consecutive microbatches share a call while they fit "
        "(no-grad calls take twice as many); 0: one call per microbatch; -1 (default): 0 on CPU, 16384 on CUDA",
    )
    speed.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=defaults.packing,
        help="padding-free rows: several sequences per row, block-diagonal attention (default on; off "
        "automatically for a model whose packed log-probs differ from padded ones)",
    )
    speed.add_argument(
        "--prefix-sharing",
        action=argparse.BooleanOptionalAction,
        default=defaults.prefix_sharing,
        help="reference passes compute each prompt once for its matched and mismatched completions (packed rows; "
        "default on; off automatically for a model or attention backend whose shared-prompt log-probs differ)",
    )
    speed.add_argument(
        "--mismatched-in-grad-call",
        action=argparse.BooleanOptionalAction,
        default=defaults.mismatched_in_grad_call,
        help="with prefix sharing on one process: a mismatched sequence whose prompt is long against its completion "
        "is scored (detached) in the call with gradient, sharing its matched sequence's prompt (default on)",
    )
    speed.add_argument(
        "--logits-chunk-size",
        type=int,
        default=defaults.logits_chunk_size,
        help="positions per LM-head + log-softmax chunk, so positions × vocabulary logits never exist at once "
        "(Llama, Mistral, Qwen2/3, Phi-3 heads); 0: whole head at once; -1 (default): 2^25 / vocabulary rows",
    )
    speed.add_argument(
        "--checkpoint-policy",
        choices=(*CHECKPOINT_POLICIES, "auto"),
        default=defaults.checkpoint_policy,
        help="what --gradient-checkpointing recomputes in backward: layer (default, TRL's: the whole decoder layer; "
        "least memory), elementwise (only norms, activations and other element-wise ops; matmul and attention "
        "outputs are kept: about half the activation memory of no checkpointing, no matmul recomputed) or auto "
        "(measured at start: no checkpointing, elementwise or layer, the first whose peak fits --memory-limit-gib)",
    )
    speed.add_argument(
        "--memory-limit-gib",
        type=float,
        default=defaults.memory_limit_gib,
        help="for --checkpoint-policy auto: the memory the run may use (default 0: what the device leaves it)",
    )
    speed.add_argument("--optimizer-impl", choices=("fused", "foreach", "for-loop"), default=defaults.optimizer_impl)
    speed.add_argument(
        "--compile",
        dest="compile_backend",
        nargs="?",
        const="inductor",
        default=defaults.compile_backend,
        metavar="BACKEND",
        help="torch.compile each decoder layer (dynamic shapes; BACKEND default inductor); the first steps "
        "pay the compilation",
    )
    speed.add_argument(
        "--profile-steps",
        type=int,
        default=defaults.profile_steps,
        metavar="N",
        help="torch.profiler over N optimizer steps from the second: profile.json (busiest operators, kernel "
        "launches per step, on CUDA the GPU's busy share of the wall time) and profile.txt in --out; slows them",
    )
    train.add_argument("--logging-steps", type=int, default=defaults.logging_steps)
    train.add_argument(
        "--save-steps", type=int, default=defaults.save_steps, help="checkpoint every N steps (0: never)"
    )
    train.add_argument(
        "--max-nonfinite-steps",
        type=int,
        default=defaults.max_nonfinite_steps,
        help="abort after this many consecutive steps with a non-finite loss or gradient norm (each is skipped)",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    train.add_argument(
        "--expected-world-size",
        type=int,
        default=None,
        help="refuse to train unless the launcher started exactly this many processes "
        "(default: $PROSPECT_EXPECTED_WORLD_SIZE, else not checked)",
    )
    train.add_argument(
        "--trl-compat",
        action="store_true",
        help="TRL KTOTrainer's data order, mismatched pairing and truncation, so the run matches TRL's "
        "step for step (see INTERFACE.md)",
    )

    evaluate = commands.add_parser("evaluate", help="loss, reward accuracy and mean rewards on a JSONL file")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True)
    evaluate.add_argument("--reference", help="reference model dir (default: an adapter's base, or the recorded base)")
    evaluate.add_argument("--beta", type=float, default=0.1)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--max-length", type=int, default=1024)
    evaluate.add_argument(
        "--per-example",
        metavar="FILE",
        help="also write one JSONL line per example: {index, desirable, reward, z0, correct, loss} (needs a reference)",
    )

    score = commands.add_parser("score", help="per row: sum of completion-token log-probs and their count")
    score.add_argument("--model", required=True, help="model dir (full weights or a LoRA adapter)")
    score.add_argument("--data", required=True, help="JSONL rows {prompt, completion} (other keys ignored)")
    score.add_argument("--out", required=True, help="JSONL: one {logp, n_tokens} line per input row, in order")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--max-length", type=int, default=defaults.max_length)
    score.add_argument("--max-prompt-length", type=int, default=None)
    score.add_argument("--trl-compat", action="store_true", help="truncate as TRL does (keep the start)")
    score.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    generate = commands.add_parser("generate", help="completions for prompts")
    generate.add_argument("--model", required=True)
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt")
    source.add_argument("--prompts", help="a file: JSONL with a 'prompt' field, or one prompt per line")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", help="also write {prompt, completion} JSONL here")

    demo = commands.add_parser("demo-model", help="build the offline demo model")
    demo.add_argument("--out", required=True)
    demo.add_argument("--seed", type=int, default=0)

    merge = commands.add_parser("merge-adapter", help="fold a LoRA adapter into its base (full weights)")
    merge.add_argument("--base", required=True, help="the full-weights directory the adapter was trained on")
    merge.add_argument("--adapter", required=True)
    merge.add_argument("--out", required=True, help="new output directory")

    judge = commands.add_parser("demo-accuracy", help="greedy exact-match accuracy on held-out demo prompts")
    judge.add_argument("--model", required=True)
    judge.add_argument("--prompts", type=int, default=64, help="how many held-out demo prompts")
    judge.add_argument("--seed", type=int, default=0)
    judge.add_argument(
        "--per-example", metavar="FILE", help="also write one JSONL line per prompt: {prompt, completion, correct}"
    )
    return parser


def _read_prompts(path: str) -> list:
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such prompts file")
    prompts = []
    for line_number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: malformed JSON ({error.msg})") from None
            if not isinstance(row, dict) or "prompt" not in row:
                raise DataError(f"{path}:{line_number}: missing field 'prompt'")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def run(args: argparse.Namespace) -> dict:
    if args.command == "train":
        from .trainer import train

        options = {key: value for key, value in vars(args).items() if key not in ("command", "no_progress")}
        if options["expected_world_size"] is None:
            from .distributed import expected_world_size_from_env

            options["expected_world_size"] = expected_world_size_from_env()
        return train(TrainConfig(progress=not args.no_progress, **options))
    if args.command == "evaluate":
        from .evaluation import evaluate

        return evaluate(
            args.model,
            args.data,
            reference_dir=args.reference,
            beta=args.beta,
            batch_size=args.batch_size,
            max_length=args.max_length,
            per_example_path=args.per_example,
        )
    if args.command == "score":
        from .evaluation import score

        return score(
            args.model,
            args.data,
            args.out,
            batch_size=args.batch_size,
            max_length=args.max_length,
            max_prompt_length=args.max_prompt_length,
            trl_compat=args.trl_compat,
            progress=not args.no_progress,
        )
    if args.command == "generate":
        from .generation import generate_completions

        if not Path(args.model).is_dir():
            raise TrainingError(f"--model {args.model}: no such directory")
        prompts = [args.prompt] if args.prompt is not None else _read_prompts(args.prompts)
        completions = generate_completions(
            args.model, prompts, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed
        )
        summary = {"model": args.model, "n": len(prompts), "temperature": args.temperature}
        if args.out:
            out = Path(args.out)
            temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            temporary.write_text(
                "".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(prompts, completions))
            )
            os.replace(temporary, out)
            summary["out"] = str(out)
        else:
            summary["completions"] = completions
        return summary
    if args.command == "demo-model":
        from .demo import build_demo_model, demo_accuracy, demo_prompts

        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            raise TrainingError(f"--out {out} exists and is not empty")
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            build_demo_model(temporary, seed=args.seed)
            if out.exists():
                out.rmdir()
            os.replace(temporary, out)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        accuracy = demo_accuracy(str(out), demo_prompts(200, seed=0, split="heldout"))
        return {"path": str(out), "heldout_accuracy": accuracy, "seed": args.seed}
    if args.command == "merge-adapter":
        from .merge import merge_adapter

        return {"path": merge_adapter(args.base, args.adapter, args.out)}
    if args.command == "demo-accuracy":
        from .demo import demo_accuracy, demo_prompts

        prompts = demo_prompts(args.prompts, seed=args.seed, split="heldout")
        if not args.per_example:
            return {"demo_accuracy": demo_accuracy(args.model, prompts), "prompts": args.prompts}
        from .demo import simulated_annotator
        from .generation import generate_completions

        # The same greedy completions demo_accuracy judges, kept per prompt for a paired test.
        completions = generate_completions(args.model, prompts, max_new_tokens=5, temperature=0.0, batch_size=500)
        rows = [
            {"prompt": p, "completion": c, "correct": simulated_annotator(p, c)} for p, c in zip(prompts, completions)
        ]
        out = Path(args.per_example)
        temporary = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        temporary.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(temporary, out)
        accuracy = sum(row["correct"] for row in rows) / len(rows)
        return {"demo_accuracy": accuracy, "prompts": args.prompts, "per_example": str(out)}
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_NONFINITE
    except (TrainingError, DataError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE_OR_DATA
    if summary is not None:  # None on the non-main processes of a multi-process run
        print(json.dumps(summary, default=str), flush=True)
    return 0
