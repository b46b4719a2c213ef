"""The train command's flags mean what TRL's mean: same names, same defaults, and the effective
batch, optimizer steps and warmup steps are printed at start."""

from __future__ import annotations

import dataclasses
import json

from training.kto.cli import build_parser

# TRL KTOConfig field -> our option (dest); every TRL-named flag of `train`.
TRL_NAMED = [
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "max_length",
    "beta",
    "desirable_weight",
    "undesirable_weight",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "logging_steps",
    "save_steps",
    "gradient_checkpointing",
]


def train_defaults() -> dict:
    return vars(build_parser().parse_args(["train", "--model", "M", "--data", "D", "--out", "O"]))


def test_trl_named_flags_default_to_trls_values():
    from trl import KTOConfig

    trl = {field.name: field.default for field in dataclasses.fields(KTOConfig)}
    ours = train_defaults()
    for name in TRL_NAMED:
        assert ours[name] == trl[name], name
    assert trl["warmup_steps"] == 0 and ours["warmup_ratio"] == 0  # a float < 1 is a ratio in transformers 5
    assert ours["keep_dropout"] is (not trl["disable_dropout"])


def test_auto_class_weights_are_still_accepted():
    args = build_parser().parse_args(
        [
            "train",
            "--model",
            "M",
            "--data",
            "D",
            "--out",
            "O",
            "--desirable-weight",
            "auto",
            "--undesirable-weight",
            "AUTO",
        ]
    )
    assert (args.desirable_weight, args.undesirable_weight) == ("auto", "auto")


def test_a_trl_command_line_trains_with_trls_batch_and_says_so(demo_model_dir, feedback_jsonl, tmp_path, run_cli):
    """Issue 7: `--per-device-train-batch-size 16` used to train with an effective batch of 64
    (accumulation 4) and 10 % warmup, silently."""
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--model",
        demo_model_dir,
        "--data",
        feedback_jsonl,
        "--out",
        str(out),
        "--per-device-train-batch-size",
        "16",
        "--num-train-epochs",
        "1",
        "--max-length",
        "32",
        "--no-gradient-checkpointing",
        "--no-progress",
    )
    config = json.loads((out / "config.json").read_text())
    steps = config["total_steps"]
    assert steps == config["n_examples"] // 16  # one microbatch of 16 per optimizer step, one epoch
    assert config["warmup_steps"] == 0
    assert (
        f"effective batch 16 (16 per device × 1 processes × 1 accumulation), {steps} optimizer steps, "
        f"0 warmup steps" in result.stderr
    )
    assert config["class_weights"]["desirable_weight"] == config["class_weights"]["undesirable_weight"] == 1.0
