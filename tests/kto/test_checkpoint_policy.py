"""--checkpoint-policy: what gradient checkpointing recomputes. "elementwise" keeps the matmul and
attention outputs and recomputes the rest, "layer" (TRL's) recomputes whole decoder layers. Both
train to the numbers of no checkpointing; elementwise holds markedly less activation memory than
no checkpointing and more than layer (counted by storage, so the same on every machine), on every
architecture of the fixtures."""

from __future__ import annotations

import pytest
import torch

from tests.kto.helpers import metrics_of
from tests.kto.test_speed_levers import OPTIMISED, _run, _train, _write_rows, one_thread  # noqa: F401
from training.kto import data as kto_data
from training.kto.cli import build_parser
from training.kto.fixtures import ARCHITECTURES
from training.kto.modeling import SequenceLogProbs, enable_checkpointing, load_causal_lm
from training.kto.profiling import HeldBytes
from training.kto.testing import get_or_build_fixture_model
from training.kto.trainer import TrainConfig, TrainingError, check_config

SETTINGS = {
    "off": dict(gradient_checkpointing=False),
    "layer": dict(gradient_checkpointing=True, checkpoint_policy="layer"),
    "elementwise": dict(gradient_checkpointing=True, checkpoint_policy="elementwise"),
}


def _forward_backward(model_dir: str, setting: str, joined) -> tuple[int, torch.Tensor]:
    """Bytes the policy's forward leaves for backward, and the gradient of every weight."""
    model = load_causal_lm(model_dir)
    if SETTINGS[setting]["gradient_checkpointing"]:
        enable_checkpointing(model, setting)
    model.config.use_cache = False
    policy = SequenceLogProbs(model, logits_chunk_size=7).train()
    batch = kto_data.pack(joined, pad_token_id=0)
    with HeldBytes() as held:
        logps, _ = policy(
            batch["input_ids"],
            batch["attention_mask"],
            batch["completion_mask"],
            position_ids=batch["position_ids"],
            sequence_ids=batch["sequence_ids"],
            n_sequences=len(joined),
        )
    held_bytes = held.alive(exclude=(logps,))
    logps.sum().backward()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return held_bytes, gradient


@pytest.mark.parametrize(
    "family, architecture", [("bpe", architecture) for architecture in ARCHITECTURES] + [("sentencepiece", "llama")]
)
def test_elementwise_policy_holds_less_than_none_and_more_than_layer(family, architecture):
    model_dir = get_or_build_fixture_model(family, architecture)
    generator = torch.Generator().manual_seed(0)
    joined = [
        (torch.randint(3, 200, (int(length),), generator=generator).tolist(), int(length) // 3)
        for length in torch.randint(40, 120, (6,), generator=generator)
    ]
    held, gradients = {}, {}
    for setting in SETTINGS:
        held[setting], gradients[setting] = _forward_backward(model_dir, setting, joined)
    # Same gradients: the recompute replays the same ops on the same inputs.
    assert torch.allclose(gradients["elementwise"], gradients["off"], atol=1e-6, rtol=0)
    assert torch.allclose(gradients["layer"], gradients["off"], atol=1e-6, rtol=0)
    # Kept matmul outputs cost memory that layer checkpointing does not hold; the recomputed
    # element-wise ops' outputs are memory that no checkpointing holds. Measured on these tiny
    # models (hidden 32, MLP 64): elementwise 0.47-0.67 × off (Cohere and Gemma 3 keep the most),
    # layer 0.17-0.34 × off.
    assert held["layer"] < held["elementwise"] < 0.7 * held["off"], held


@pytest.mark.parametrize("setup", ["full_precompute", "lora_live_reference"])
def test_every_policy_trains_to_the_same_numbers(bpe_model_dir, tmp_path, setup):
    data = _write_rows(tmp_path / "data.jsonl", 36)
    extra = dict(lora=True, reference="copy") if setup == "lora_live_reference" else {}
    runs, summaries = {}, {}
    for setting, options in SETTINGS.items():
        summaries[setting] = _train(bpe_model_dir, data, tmp_path / setting, **OPTIMISED, **extra, **options)
        runs[setting] = metrics_of(tmp_path / setting)
    assert [summaries[s]["speed_levers"]["checkpointing"] for s in SETTINGS] == list(SETTINGS)
    # 1e-5 as for the other speed levers: layer recompute changes which mismatched sequences are
    # merged into the call with gradient (mismatched_merge_ratio), so z0 is summed in another order.
    for setting in ("layer", "elementwise"):
        for plain, checkpointed in zip(runs["off"], runs[setting], strict=True):
            for key in ("loss", "z0_raw", "grad_norm"):
                assert checkpointed[key] == pytest.approx(plain[key], abs=1e-5), (setting, plain["step"], key)


def test_an_unknown_policy_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "M", "--data", "D", "--out", "O", "--checkpoint-policy", "half"])
    config = TrainConfig(model=str(tmp_path), data="d", out="o", checkpoint_policy="half")
    with pytest.raises(
        TrainingError, match="--checkpoint-policy must be one of layer, elementwise or auto, got 'half'"
    ):
        check_config(config)


def test_compiled_layers_keep_the_elementwise_policys_numbers(bpe_model_dir, tmp_path):
    """torch.compile traces the checkpoint and its policy into the layer's graph (aot_eager: the
    same capture as inductor, run eagerly; see test_compile.py)."""
    data = _write_rows(tmp_path / "data.jsonl", 36)
    options = {**OPTIMISED, **SETTINGS["elementwise"]}
    torch._dynamo.reset()
    try:
        eager = _run(bpe_model_dir, data, tmp_path / "eager", **options)
        compiled = _run(bpe_model_dir, data, tmp_path / "compiled", **options, compile_backend="aot_eager")
    finally:
        torch._dynamo.reset()
    for eager_step, compiled_step in zip(eager, compiled, strict=True):
        for key in ("loss", "z0_raw", "grad_norm"):
            assert compiled_step[key] == pytest.approx(eager_step[key], abs=1e-6), (eager_step["step"], key)


def test_the_activation_memory_bench_ranks_the_policies():
    """bench/activation_memory.py on its tiny shape (fp32): one JSON line, per-layer bytes in the
    order none > elementwise > layer, and layer checkpointing keeps exactly the layer's fp32 input."""
    import json
    import subprocess
    import sys

    from training.kto.testing import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "bench/activation_memory.py", "--model-kinds", "tiny", "--precision", "fp32"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    per_layer = report["tiny"]["bytes_per_token_per_layer"]
    assert per_layer["none"] > per_layer["elementwise"] > per_layer["layer"]
    assert per_layer["layer"] == 64 * 4  # hidden size 64, fp32
    assert report["tiny"]["projected_gib_per_call"]["none"] > report["tiny"]["projected_gib_per_call"]["elementwise"]
