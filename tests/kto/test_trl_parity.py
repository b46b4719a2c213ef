"""`train --trl-compat` matches TRL's KTOTrainer on a whole run: the loss of every optimizer step to 1e-5
and the final weights to 1e-4, on both tokenizer families, standard and conversational data, full
fine-tuning and LoRA. Every setting is passed explicitly on both sides."""

from __future__ import annotations

import json
import random

import pytest
import torch

N_ROWS = 34  # 17 microbatches of 2: 8 steps of 2 microbatches and a last step of one
SETTINGS = dict(
    beta=0.1,
    learning_rate=1e-3,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    num_train_epochs=1,
    warmup=0.1,
    weight_decay=0.0,
    max_grad_norm=1.0,
    seed=7,
    desirable_weight=1.0,
    undesirable_weight=1.25,
    lora_r=8,
    lora_alpha=16,
)


def parity_rows(conversational: bool) -> list[dict]:
    rng = random.Random(3)
    rows = []
    for index in range(N_ROWS):
        a, b = rng.randrange(100), rng.randrange(10)
        prompt = f"What is {a}+{b}?"
        if index == 5:
            prompt = "The quick brown fox jumps over the lazy dog. " * 6 + prompt  # fills max_length: dropped
        elif index % 7 == 3:
            prompt = "Hello, how are you today? I am fine, thank you. " * 2 + prompt  # cut by max_length
        completion = rng.choice([f"Answer: {a + b}.", f"{a + b + 1}", "I don't know.", f"Yes, it is {a + b}."])
        label = rng.random() < 0.6
        if conversational:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": completion}],
                    "label": label,
                }
            )
        else:
            rows.append({"prompt": prompt + " ", "completion": completion, "label": label})
    return rows


class _RecordingKTOTrainer:
    """TRL's KTOTrainer, recording each microbatch's loss (its logs are rounded)."""

    @staticmethod
    def create(**kwargs):
        from trl import KTOTrainer

        class Recording(KTOTrainer):
            losses: list[float] = []

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if model.training:
                    type(self).losses.append(loss.item())
                return loss

        Recording.losses = []
        return Recording(**kwargs)


def max_length_for(model_dir, rows) -> int:
    """One more than the longest medium prompt: those rows lose their completion's end, the one
    very long prompt fills it (TRL drops that row), short rows fit."""
    from training.kto import data as kto_data
    from training.kto.modeling import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    lengths = sorted(len(kto_data.tokenize_example(tokenizer, row["prompt"], "x")[0]) for row in rows)
    return lengths[-2] + 1


def run_trl(model_dir, data_path, out_dir, lora: bool, max_length: int):
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import KTOConfig

    from training.kto.modeling import load_tokenizer

    args = KTOConfig(
        output_dir=str(out_dir),
        report_to="none",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        beta=SETTINGS["beta"],
        learning_rate=SETTINGS["learning_rate"],
        per_device_train_batch_size=SETTINGS["per_device_train_batch_size"],
        gradient_accumulation_steps=SETTINGS["gradient_accumulation_steps"],
        num_train_epochs=SETTINGS["num_train_epochs"],
        warmup_steps=SETTINGS["warmup"],
        lr_scheduler_type="linear",
        weight_decay=SETTINGS["weight_decay"],
        max_grad_norm=SETTINGS["max_grad_norm"],
        seed=SETTINGS["seed"],
        desirable_weight=SETTINGS["desirable_weight"],
        undesirable_weight=SETTINGS["undesirable_weight"],
        max_length=max_length,
        loss_type="kto",
        disable_dropout=True,
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    peft_config = (
        LoraConfig(
            r=SETTINGS["lora_r"],
            lora_alpha=SETTINGS["lora_alpha"],
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        if lora
        else None
    )
    dataset = load_dataset("json", data_files=str(data_path), split="train", cache_dir=str(out_dir / "hf-cache"))
    trainer = _RecordingKTOTrainer.create(
        model=model_dir,
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(model_dir),
        peft_config=peft_config,
    )
    trainer.train()
    accumulation = SETTINGS["gradient_accumulation_steps"]
    losses = type(trainer).losses
    step_losses = [
        sum(losses[i : i + accumulation]) / len(losses[i : i + accumulation])
        for i in range(0, len(losses), accumulation)
    ]
    weights = {
        name: parameter.detach().clone()
        for name, parameter in trainer.model.named_parameters()
        if parameter.requires_grad or not lora
    }
    return step_losses, weights, len(trainer.train_dataset)


def run_engine(model_dir, data_path, out_dir, lora: bool, max_length: int):
    """The engine in this process (as `train --trl-compat` runs it; the CLI is tested elsewhere)."""
    from safetensors.torch import load_file

    from training.kto.trainer import TrainConfig, train

    config = TrainConfig(
        model=model_dir,
        data=str(data_path),
        out=str(out_dir),
        trl_compat=True,
        progress=False,
        loss="kto",
        beta=SETTINGS["beta"],
        learning_rate=SETTINGS["learning_rate"],
        per_device_train_batch_size=SETTINGS["per_device_train_batch_size"],
        gradient_accumulation_steps=SETTINGS["gradient_accumulation_steps"],
        num_train_epochs=SETTINGS["num_train_epochs"],
        warmup_ratio=SETTINGS["warmup"],
        weight_decay=SETTINGS["weight_decay"],
        max_grad_norm=SETTINGS["max_grad_norm"],
        seed=SETTINGS["seed"],
        desirable_weight=SETTINGS["desirable_weight"],
        undesirable_weight=SETTINGS["undesirable_weight"],
        max_length=max_length,
        bf16="no",
        logging_steps=1,
        save_steps=0,
        max_steps=-1,
        lora=lora,
        lora_r=SETTINGS["lora_r"],
        lora_alpha=SETTINGS["lora_alpha"],
        lora_dropout=0.0,
    )
    train(config)
    metrics = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    final = out_dir / "final"
    weights = load_file(final / ("adapter_model.safetensors" if lora else "model.safetensors"))
    return [record["loss"] for record in metrics], weights


def _trl_name(name: str, trl_weights: dict, lora: bool) -> str:
    if not lora:
        return name
    # peft saves "base_model.model.X.lora_A.weight"; the live module names it "...lora_A.default.weight"
    return name.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("conversational", [False, True], ids=["standard", "conversational"])
def test_trl_compat_run_matches_trl(family_model_dir, conversational, lora, tmp_path):
    from training.kto.modeling import load_causal_lm

    data_path = tmp_path / "data.jsonl"
    rows = parity_rows(conversational)
    data_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    max_length = max_length_for(family_model_dir, rows)
    trl_losses, trl_weights, n_kept = run_trl(family_model_dir, data_path, tmp_path / "trl", lora, max_length)
    assert n_kept == N_ROWS - 1  # TRL dropped the row whose prompt fills max_length
    engine_losses, engine_weights = run_engine(family_model_dir, data_path, tmp_path / "engine", lora, max_length)

    assert len(engine_losses) == len(trl_losses) == 9
    torch.testing.assert_close(torch.tensor(engine_losses), torch.tensor(trl_losses), rtol=0, atol=1e-5)
    initial = {name: tensor for name, tensor in load_causal_lm(family_model_dir).state_dict().items()}
    moved = 0.0
    for name, tensor in engine_weights.items():
        trl_tensor = trl_weights[_trl_name(name, trl_weights, lora)]
        torch.testing.assert_close(tensor, trl_tensor, rtol=0, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
        reference = torch.zeros_like(tensor) if lora and "lora_B" in name else initial.get(name)
        if reference is not None:
            moved = max(moved, (tensor - reference).abs().max().item())
    assert moved > 1e-3  # the run changed the weights far more than the tolerance


@pytest.mark.parametrize("loss", ["dpo", "sft", "concave"])
def test_trl_compat_refuses_losses_trls_kto_trainer_does_not_have(bpe_model_dir, tmp_path, loss):
    from training.kto.trainer import TrainConfig, TrainingError, check_config

    config = TrainConfig(
        model=bpe_model_dir, data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "out"), loss=loss, trl_compat=True
    )
    with pytest.raises(TrainingError, match="--trl-compat reproduces TRL's KTOTrainer"):
        check_config(config)


def test_trl_order_and_pairing():
    from training.kto.data import plan_trl_steps, trl_mismatched_partners

    steps = plan_trl_steps(7, microbatch_size=2, world_size=1, gradient_accumulation_steps=2, num_train_epochs=2)
    assert steps == [(0, [[0, 1], [2, 3]]), (0, [[4, 5], [6]]), (1, [[0, 1], [2, 3]]), (1, [[4, 5], [6]])]
    assert plan_trl_steps(7, 2, 1, 2, num_train_epochs=1.5) == steps[:3]  # ceil(1.5 × 2 steps)
    assert trl_mismatched_partners(4) == [3, 0, 1, 2] and trl_mismatched_partners(1) == [0]
    with pytest.raises(ValueError, match="one process"):
        plan_trl_steps(8, 2, world_size=2, gradient_accumulation_steps=1, num_train_epochs=1)


def test_the_cli_flags_reach_the_trainer(bpe_model_dir, tmp_path, run_cli):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in parity_rows(False)))
    result = run_cli(
        "train",
        "--model",
        bpe_model_dir,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--trl-compat",
        "--loss",
        "dpo",
        check=False,
    )
    assert result.returncode == 2 and "--trl-compat reproduces TRL's KTOTrainer" in result.stderr
    result = run_cli(
        "train",
        "--model",
        bpe_model_dir,
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--max-prompt-length",
        "0",
        check=False,
    )
    assert result.returncode == 2 and "--max-prompt-length must be at least 1" in result.stderr
    assert not (tmp_path / "out").exists()
