"""FSDP2 for real, on two CPU processes over gloo: the shipped FSDP configs against DDP on the same
data, sharded checkpoints resumed, and the gathered final/ written once and loadable.

accelerate will not run FSDP on CPU processes by itself; `-m training.kto.cpu_fsdp` restores the
distributed type the config asks for and runs the engine's CLI (see that module). Each run checks
config.json's `distributed_type`, so a silent fall-back to DDP cannot pass as FSDP.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.kto.helpers import run_launch
from training.kto.distributed import SHARDED_STATE_DIR, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "training" / "kto" / "accelerate"

STEPS = ["--max-steps", "4", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2"]
SMALL = ["--max-length", "48", "--learning-rate", "1e-3", "--warmup-ratio", "0", "--logging-steps", "1"]


def start(
    config: str, entry: str, model: str, data: str, out: Path, *options: str, layer_class=None, processes: int = 2
):
    """`accelerate launch` of `processes` processes under `config`, running `python -m entry train ...`."""
    wrap = ["--fsdp_transformer_layer_cls_to_wrap", layer_class] if layer_class else []
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config)),
        *("--num_processes", str(processes), "--main_process_port", str(free_port()), *wrap),
        *("-m", entry, "train", "--model", model, "--data", data, "--out", str(out)),
        *(*STEPS, *SMALL, "--bf16", "no", "--no-progress", "--expected-world-size", str(processes), *options),
    ]
    return run_launch(command, check=False)


def launch(config: str, model: str, data: str, out: Path, *options: str, layer_class: str | None = None) -> dict:
    """Two processes under `config`; FSDP configs run through training.kto.cpu_fsdp. Returns the summary."""
    entry = "training.kto.cpu_fsdp" if config.startswith("fsdp") else "training.kto"
    result = start(config, entry, model, data, out, *options, layer_class=layer_class)
    assert result.returncode == 0, result.stderr[-4000:]
    expected_type = "FSDP" if config.startswith("fsdp") else "MULTI_CPU"
    recorded = json.loads((out / "config.json").read_text())
    assert (recorded["world_size"], recorded["distributed_type"]) == (2, expected_type)
    return json.loads(result.stdout.strip().splitlines()[-1])


def per_step(out: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(final: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(final / name))


def assert_same_weights(left: dict, right: dict, atol: float) -> None:
    """Element by element: for runs in the same process layout (a resumed run against its uninterrupted one)."""
    assert sorted(left) == sorted(right)
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=atol, msg=name)


def assert_same_updates(left: dict, right: dict, initial: dict | None, rel: float = 1e-3) -> None:
    """Tensor by tensor, for runs in different process layouts (FSDP against DDP): the difference's
    norm against the update's (initial None: against the tensor's own norm, for a LoRA adapter whose
    B starts at zero). Element by element is not portable here: AdamW divides each gradient by its
    running RMS, so an element whose gradient is near zero moves by an amount that float summation
    order decides, and FSDP sums gradients in another order than DDP (seen: 3e-5 on one CPU, under
    1e-5 on another). A wrong sharded pass changes the update's direction, far above 1e-3."""
    assert sorted(left) == sorted(right)
    for name in right:
        update = right[name] - initial[name] if initial is not None else right[name]
        difference = float((left[name] - right[name]).norm())
        assert difference <= rel * float(update.norm()) + 1e-7, (name, difference, float(update.norm()))


@pytest.mark.slow
def test_fsdp_full_shard_trains_like_ddp_and_resumes_from_its_shards(bpe_model_dir, feedback_jsonl, tmp_path):
    # The Qwen2 fixture: the README's instruction to name the model's own decoder layer, followed.
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    launch("ddp.yaml", bpe_model_dir, feedback_jsonl, ddp)
    launch(
        "fsdp_full_shard.yaml",
        bpe_model_dir,
        feedback_jsonl,
        fsdp,
        "--save-steps",
        "2",
        layer_class="Qwen2DecoderLayer",
    )

    # The policy, mismatched (z0) and reference passes all ran through the sharded model: the same
    # numbers as whole-model data parallelism, step by step.
    for key in ("loss", "z0", "z0_raw", "reward_margin"):
        assert per_step(fsdp, key) == pytest.approx(per_step(ddp, key), abs=1e-5), key
    # The mismatched pass really ran: z0 before its clamp at 0 (the clamped one is 0 on some data).
    assert any(abs(z0) > 1e-3 for z0 in per_step(fsdp, "z0_raw"))
    trained, base = weights(fsdp / "final"), weights(Path(bpe_model_dir))
    assert max(float((trained[name] - base[name]).abs().max()) for name in base) > 1e-4  # it learned
    assert_same_updates(trained, weights(ddp / "final"), base)  # gathered from both ranks

    # The step-2 checkpoint is sharded: one model and optimizer file per rank, resumed exactly.
    shards = sorted(path.name for path in (fsdp / "checkpoints" / "step-2" / SHARDED_STATE_DIR).rglob("*.distcp"))
    assert len(shards) >= 2, shards
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed, ignore=shutil.ignore_patterns("final"))
    summary = launch(
        "fsdp_full_shard.yaml",
        bpe_model_dir,
        feedback_jsonl,
        resumed,
        "--save-steps",
        "2",
        "--resume",
        layer_class="Qwen2DecoderLayer",
    )
    assert summary["resumed_from_step"] == 2
    assert per_step(resumed, "loss") == pytest.approx(per_step(fsdp, "loss"), abs=1e-6)
    assert_same_weights(weights(resumed / "final"), trained, atol=1e-6)


@pytest.mark.slow
def test_fsdp_final_keeps_tied_embeddings_tied(demo_model_dir, feedback_jsonl, tmp_path):
    """Gathering copies the LM head and the input embedding it is tied to separately; final/ must
    still hold the tie once, as the base model and a single-process run do."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fsdp"
    launch("fsdp_full_shard.yaml", demo_model_dir, feedback_jsonl, out)
    assert sorted(weights(out / "final")) == sorted(weights(Path(demo_model_dir)))
    model = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits).all()


@pytest.mark.slow
def test_fsdp_shards_the_live_reference_copy_and_gives_ddps_numbers(demo_model_dir, feedback_jsonl, tmp_path):
    """Offline PPO needs per-token reference log-probs every step, from a frozen copy of the initial
    model: under FSDP that copy is sharded like the policy instead of held whole by every rank."""
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    launch("ddp.yaml", demo_model_dir, feedback_jsonl, ddp, "--loss", "ppo_offline")
    launch("fsdp_full_shard.yaml", demo_model_dir, feedback_jsonl, fsdp, "--loss", "ppo_offline")
    recorded = json.loads((fsdp / "config.json").read_text())
    assert recorded["reference_sharded"] is True
    assert json.loads((ddp / "config.json").read_text())["reference_sharded"] is False
    # PPO's per-step losses reach a few units here: float32 summation order is 1e-5 relative.
    assert per_step(fsdp, "loss") == pytest.approx(per_step(ddp, "loss"), rel=1e-5, abs=1e-5)
    assert_same_updates(weights(fsdp / "final"), weights(ddp / "final"), weights(Path(demo_model_dir)))


@pytest.mark.slow
def test_fsdp_with_lora_trains_like_ddp_with_lora(sentencepiece_model_dir, feedback_jsonl, tmp_path):
    # A live reference: the base with the adapter disabled, computed through the sharded model each step
    # (a precomputed one is computed before the model is sharded).
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    launch("ddp.yaml", sentencepiece_model_dir, feedback_jsonl, ddp, "--lora", "--reference", "copy")
    lora = ("--lora", "--reference", "copy", "--save-steps", "2")
    launch("fsdp_lora.yaml", sentencepiece_model_dir, feedback_jsonl, fsdp, *lora)
    for key in ("loss", "z0", "z0_raw", "reward_margin"):
        assert per_step(fsdp, key) == pytest.approx(per_step(ddp, key), abs=1e-5), key
    adapter = weights(fsdp / "final", "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)  # the adapter only, not the base
    assert_same_updates(adapter, weights(ddp / "final", "adapter_model.safetensors"), initial=None)

    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed, ignore=shutil.ignore_patterns("final"))
    summary = launch("fsdp_lora.yaml", sentencepiece_model_dir, feedback_jsonl, resumed, *lora, "--resume")
    assert summary["resumed_from_step"] == 2
    assert_same_weights(weights(resumed / "final", "adapter_model.safetensors"), adapter, atol=1e-6)


def test_an_fsdp_config_that_accelerate_would_run_as_ddp_is_refused(demo_model_dir, feedback_jsonl, tmp_path):
    """On CPU processes accelerate quietly trains an FSDP config as DDP: the engine says so and stops."""
    out = tmp_path / "out"
    result = start("fsdp_full_shard.yaml", "training.kto", demo_model_dir, feedback_jsonl, out)
    assert result.returncode != 0
    assert "asks for FSDP but accelerate started MULTI_CPU" in result.stderr
    assert "training.kto.cpu_fsdp" in result.stderr  # the message names a fix
    assert not (out / "metrics.jsonl").exists()  # refused before the first step


def test_one_process_under_an_fsdp_config_still_trains_on_cpu(demo_model_dir, feedback_jsonl, tmp_path):
    """One process has nothing to shard: accelerate's MULTI_CPU fall-back changes nothing, so it is not refused."""
    out = tmp_path / "out"
    result = start("fsdp_full_shard.yaml", "training.kto", demo_model_dir, feedback_jsonl, out, processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["world_size"] == 1
    assert (out / "final" / "model.safetensors").exists()
