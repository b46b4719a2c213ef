"""`python manage.py simulate_annotators --rounds 3`: turn the whole loop with no person.

Each round: sample outputs of the active model for demo training prompts, let the demo task's
simulated annotator vote on them (through the feedback services, like a person would), cut a
snapshot and train on it (start_run), let the evaluation gate decide, then measure the active
model's exact-match accuracy on held-out demo questions. Ends with one JSON line:
{"accuracy_by_round": [...], "baseline_accuracy": ..., ...}.

Training runs on a Celery GPU worker when one consumes the `gpu` queue, else in this process
(`--inline`, the same guarded runner the worker uses, so a run is never trained twice).
"""

from __future__ import annotations

import json
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.services import record_vote
from training import runs, selectors
from training.kto import defaults
from training.management.commands._demo_setup import ensure_active_version
from training.models import ModelVersion, TrainingRun
from training.runner import execute_run
from training.serving import generate_for_prompts

SIMULATED_VOTER = "simulated-annotator"
GATE_BUSY = (ModelVersion.EvaluationState.PENDING, ModelVersion.EvaluationState.RUNNING)
# Training settings that make the tiny demo model improve steadily, round after round, in a few
# CPU minutes. The paper's lr (5e-6) is meant for billion-parameter models and barely moves this
# one; much larger steps (1e-4 and up) jump once and then stall or break it. One epoch at 3e-5
# over the (cumulative) votes gained about ten points per round in our runs.
DEMO_TRAINING = {
    "beta": defaults.PAPER_BETA,
    "learning_rate": 3e-5,
    "num_train_epochs": 1.0,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "max_length": 32,
    "lambda_mode": "auto",
    "judges": "demo",
    "judge_prompts": 200,  # every held-out demo question: the sign test needs the prompts
    "promote_margin": 0.0,
    # The demo's own choice, not the default (95 %): with only 200 held-out questions, a round's
    # real gain of about 5 points shows as ~16 vs ~7 discordant answers (sign test p ≈ 0.03–0.05),
    # which a 95 % two-sided standard never accepts; 90 % lets a demo round promote on that
    # evidence while still refusing gains that are noise. Products keep 95 %.
    "confidence": 0.90,
}


class Command(BaseCommand):
    help = "Drive the loop with the demo task's simulated annotator and print the accuracy after each round."

    def add_arguments(self, parser):
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument(
            "--prompts-per-round", type=int, default=96, help="Training prompts sampled each round (default 96)."
        )
        parser.add_argument(
            "--samples-per-prompt",
            type=int,
            default=4,
            help="Completions sampled per prompt (default 4): right and wrong answers to the "
            "same question are what KTO learns most from.",
        )
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument(
            "--eval-prompts",
            type=int,
            default=200,
            help="Held-out demo questions the accuracy is measured on (default 200).",
        )
        parser.add_argument("--beta", type=float, default=None)
        parser.add_argument("--learning-rate", type=float, default=None)
        parser.add_argument("--epochs", type=float, default=None)
        parser.add_argument("--max-steps", type=int, default=None)
        parser.add_argument("--batch-size", type=int, default=None, help="Per-device training batch size.")
        parser.add_argument("--lora", action="store_true", help="Train LoRA adapters instead of full weights.")
        parser.add_argument(
            "--judge-prompts",
            type=int,
            default=None,
            help="Held-out prompts the evaluation gate judges each candidate on.",
        )
        parser.add_argument("--seed", type=int, default=0)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--inline",
            action="store_true",
            help="Train in this process (default when no worker consumes the gpu queue).",
        )
        mode.add_argument("--worker", action="store_true", help="Always leave training to the Celery GPU worker.")
        parser.add_argument(
            "--run-timeout",
            type=float,
            default=1800.0,
            help="Give up on a round whose run and gate take longer (seconds).",
        )

    def handle(self, *args, **options):
        from training.kto.demo import demo_prompts

        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1")
        ensure_active_version(self.say)
        inline = self.choose_inline(options)
        self.say(f"training {'in this process (--inline)' if inline else 'on the Celery gpu worker'}")
        heldout = demo_prompts(options["eval_prompts"], seed=options["seed"], split="heldout")
        config = self.training_config(options)

        baseline = self.accuracy(selectors.active_version(), heldout)
        self.say(f"round 0: active {selectors.active_version().name}, held-out accuracy {baseline:.3f}")
        accuracy_by_round, runs = [], []
        for round_number in range(1, options["rounds"] + 1):
            votes = self.collect_votes(round_number, options)
            run = self.train(config, inline, options["run_timeout"])
            active = selectors.active_version()
            accuracy = self.accuracy(active, heldout)
            accuracy_by_round.append(round(accuracy, 4))
            runs.append(run.pk)
            version = getattr(run, "produced_version", None)
            verdict = f"{version.name} {version.status} ({version.status_reason})" if version else run.error
            self.say(
                f"round {round_number}: {votes['desirable']} up / {votes['undesirable']} down votes, "
                f"run {run.pk} {run.status}: {verdict}; active {active.name}, held-out accuracy {accuracy:.3f}"
            )
        self.stdout.write(
            json.dumps(
                {
                    "accuracy_by_round": accuracy_by_round,
                    "baseline_accuracy": round(baseline, 4),
                    "runs": runs,
                    "active_version": selectors.active_version().name,
                }
            )
        )

    # ---------------------------------------------------------------------------------------------

    def choose_inline(self, options) -> bool:
        if options["inline"]:
            return True
        if options["worker"]:
            return False
        return not gpu_worker_answers()

    def training_config(self, options) -> dict:
        config = dict(DEMO_TRAINING)
        for option, key in (
            ("beta", "beta"),
            ("learning_rate", "learning_rate"),
            ("epochs", "num_train_epochs"),
            ("max_steps", "max_steps"),
            ("batch_size", "per_device_train_batch_size"),
        ):
            if options[option] is not None:
                config[key] = options[option]
        if options["lora"]:
            config["lora"] = True
        if options["judge_prompts"] is not None:
            config["judge_prompts"] = options["judge_prompts"]
        config["seed"] = options["seed"]
        return config

    def collect_votes(self, round_number: int, options) -> dict:
        """Sample the active model on fresh training prompts; the simulated annotator votes on each."""
        from training.kto.demo import demo_prompts, simulated_annotator

        prompts = demo_prompts(options["prompts_per_round"], seed=options["seed"] * 1000 + round_number, split="train")
        repeated = [prompt for prompt in prompts for _ in range(options["samples_per_prompt"])]
        generations = generate_for_prompts(
            repeated,
            source="simulate_annotators",
            temperature=options["temperature"],
            max_new_tokens=8,
            seed=options["seed"] * 1000 + round_number,
            skip_empty=True,
        )
        tally = {"desirable": 0, "undesirable": 0}
        seen = set()
        for generation in generations:
            if generation.pk in seen:  # the same answer sampled twice is one item, voted once
                continue
            seen.add(generation.pk)
            desirable = simulated_annotator(generation.prompt.content, generation.completion)
            record_vote(
                generation_id=generation.pk, desirable=desirable, external_user_id=SIMULATED_VOTER, source="simulated"
            )
            tally["desirable" if desirable else "undesirable"] += 1
        return tally

    def train(self, config: dict, inline: bool, timeout: float) -> TrainingRun:
        try:
            run = runs.start_run(config=config)
        except (ValueError, ValidationError) as exc:
            raise CommandError(f"could not start a run: {exc}") from exc
        if inline:
            # The runner's status guard makes this a no-op if a worker took the run first.
            execute_run(run.pk)
        return wait_for_run_and_gate(run, timeout)

    def accuracy(self, version: ModelVersion, prompts: list[str]) -> float:
        from training.kto.demo import demo_accuracy

        return demo_accuracy(version.artifact_path, prompts)

    def say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()


def wait_for_run_and_gate(run: TrainingRun, timeout: float, poll_seconds: float = 1.0) -> TrainingRun:
    """Block until the run finished and the gate decided on its version (or raise CommandError)."""
    deadline = time.monotonic() + timeout
    while True:
        run = TrainingRun.objects.select_related("produced_version").get(pk=run.pk)
        version = getattr(run, "produced_version", None)
        finished = run.status not in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING)
        if finished and (version is None or version.evaluation_state not in GATE_BUSY):
            return run
        if time.monotonic() > deadline:
            raise CommandError(f"run {run.pk} did not finish within {timeout:g}s (status {run.status})")
        time.sleep(poll_seconds)


def gpu_worker_answers(timeout: float = 1.5) -> bool:
    """True when a Celery worker consuming the `gpu` queue answers on the broker."""
    from config.celery import app

    try:
        queues = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # no broker, or a transport without broadcast: nobody can answer
        return False
    return any(queue.get("name") == "gpu" for worker_queues in queues.values() for queue in worker_queues)
