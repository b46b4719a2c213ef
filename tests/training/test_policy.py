"""The training config: defaults from the admin-editable policy row, validated overrides."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from feedback.models import DatasetSnapshot
from training.kto import defaults
from training.kto.cli import build_parser
from training.models import TrainingRun
from training.policy import default_training_config, get_policy, resolve_training_config
from training.runner import build_train_command

pytestmark = pytest.mark.django_db


def test_policy_row_is_created_from_settings(settings):
    settings.PROSPECT_RETRAIN_MIN_NEW_VOTES = 7
    settings.PROSPECT_TRAIN_BETA = 0.3

    policy = get_policy()

    assert (policy.min_new_votes, policy.beta) == (7, 0.3)
    assert default_training_config()["beta"] == 0.3


def test_admin_edits_of_the_policy_become_the_default_config(settings):
    policy = get_policy()
    policy.learning_rate, policy.lora, policy.max_steps = 1e-4, True, 12
    policy.save()

    config = default_training_config()

    assert (config["learning_rate"], config["lora"], config["max_steps"]) == (1e-4, True, 12)
    assert config["time_limit_seconds"] == settings.PROSPECT_MAX_RUN_SECONDS


def test_overrides_are_converted_like_form_input():
    config = resolve_training_config({"beta": "0.5", "lora": "true", "max_steps": "", "loss": "no_z0"})
    assert (config["beta"], config["lora"], config["max_steps"], config["loss"]) == (0.5, True, None, "no_z0")


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"betta": 0.1}, "betta"),
        ({"beta": "abc"}, "beta"),
        ({"beta": 0}, "beta"),
        ({"loss": "hinge"}, "loss"),
        ({"per_device_train_batch_size": 1}, "per_device_train_batch_size"),
        ({"holdout": 0.95}, "holdout"),
    ],
)
def test_bad_override_is_refused_naming_the_field(overrides, field):
    with pytest.raises(ValidationError) as caught:
        resolve_training_config(overrides)
    assert field in caught.value.message_dict


def test_time_limit_cannot_exceed_the_broker_visibility_budget(settings):
    with pytest.raises(ValidationError) as caught:
        resolve_training_config({"time_limit_seconds": settings.PROSPECT_MAX_RUN_SECONDS + 1})
    assert "time_limit_seconds" in caught.value.message_dict


def test_broker_visibility_timeout_outlasts_the_longest_run(settings):
    from config.celery import choose_broker

    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_WORKER_PREFETCH_MULTIPLIER == 1
    assert choose_broker().transport_options["visibility_timeout"] > settings.PROSPECT_MAX_RUN_SECONDS
    assert settings.CELERY_TASK_ROUTES["training.tasks.run_training"] == {"queue": "gpu"}


def test_the_loop_trains_with_the_papers_settings_spelled_out(settings, tmp_path):
    """The engine's flags default to TRL's; the loop must not inherit them silently: the default
    config has the paper's effective batch of 32 and the command states every schedule flag."""
    settings.PROSPECT_TRAIN_LAUNCHER = "python"
    config = default_training_config()
    assert (
        config["per_device_train_batch_size"] * config["gradient_accumulation_steps"] == defaults.PAPER_EFFECTIVE_BATCH
    )
    assert (config["learning_rate"], config["beta"]) == (defaults.PAPER_LEARNING_RATE, defaults.PAPER_BETA)
    run = TrainingRun(
        config=config,
        snapshot=DatasetSnapshot(desirable_weight=2.0, undesirable_weight=1.0),
        desirable_weight=2.0,
        undesirable_weight=1.0,
    )
    command = build_train_command(run, model="MODEL", data=tmp_path / "d.jsonl", out=tmp_path / "out")
    args = build_parser().parse_args(command[command.index("train") :])
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == defaults.PAPER_EFFECTIVE_BATCH
    assert (args.learning_rate, args.beta) == (defaults.PAPER_LEARNING_RATE, defaults.PAPER_BETA)
    assert (args.warmup_ratio, args.logging_steps, args.save_steps) == (
        defaults.LOOP_WARMUP_RATIO,
        defaults.LOOP_LOGGING_STEPS,
        defaults.LOOP_SAVE_STEPS,
    )
    assert (args.gradient_checkpointing, args.checkpoint_policy) == (True, defaults.LOOP_CHECKPOINTING)
    assert (args.desirable_weight, args.undesirable_weight) == (2.0, 1.0)  # the snapshot's λ
