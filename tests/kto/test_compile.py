"""`--compile`: torch.compile on each decoder layer. The captured graphs must compute what the
eager layers compute (per-step loss, z0, gradient norm), and packed rows of changing widths must
not recompile the layer at every call — on a GPU a recompile costs seconds, so a graph per shape
would make the lever a loss.

The tests use the aot_eager backend: it goes through the same graph capture (dynamo) and
autograd tracing (AOT) as inductor and runs the traced graph eagerly, so a capture that changes
the maths or recompiles per shape shows here, in seconds. Inductor's own kernels are measured on
the GPU by bench/gpu_speed.py."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from tests.kto.test_speed_levers import OPTIMISED, _run, _write_rows
from training.kto.trainer import TrainConfig, TrainingError, check_config


@pytest.fixture(autouse=True)
def one_thread_and_fresh_dynamo():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(threads)


# Ways a layer runs: full fine-tuning with and without gradients; LoRA also with its adapter
# disabled (the live reference). Each may take one static graph for its first shape and one
# dynamic graph after that; a graph per call would be far more.
@pytest.mark.parametrize(
    "family, extra, modes",
    [("bpe", {}, 2), ("sentencepiece", dict(lora=True, reference="copy"), 3)],
    ids=["bpe-full", "sentencepiece-lora"],
)
def test_compiled_layers_train_like_eager_ones_without_recompiling(request, tmp_path, family, extra, modes):
    model_dir = request.getfixturevalue(f"{family}_model_dir")
    data = _write_rows(tmp_path / "data.jsonl", 36)
    eager = _run(model_dir, data, tmp_path / "eager", **OPTIMISED, **extra)
    assert counters["stats"]["unique_graphs"] == 0
    compiled = _run(model_dir, data, tmp_path / "compiled", **OPTIMISED, **extra, compile_backend="aot_eager")
    assert len(eager) == len(compiled) == 3
    for eager_step, compiled_step in zip(eager, compiled):
        for key in ("loss", "z0_raw", "grad_norm", "reward_margin"):
            assert compiled_step[key] == pytest.approx(eager_step[key], abs=1e-6), (eager_step["step"], key)
    # Graphs were captured (the layers really ran compiled) ...
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    # ... and not one per call: three steps make dozens of layer calls of changing widths.
    assert graphs <= 2 * modes, dict(counters["stats"])


def test_an_unknown_backend_is_refused_by_name(bpe_model_dir, tmp_path):
    config = TrainConfig(model=bpe_model_dir, data="d.jsonl", out=str(tmp_path / "out"), compile_backend="indcutor")
    with pytest.raises(TrainingError, match="--compile indcutor: no such torch.compile backend"):
        check_config(config)
