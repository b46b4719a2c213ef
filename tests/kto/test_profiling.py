"""`--profile-steps N`: torch.profiler over a few optimizer steps, the explanation a GPU run needs of
where the loop's time goes (busiest operators, kernel launches per step, the GPU's busy share).
Watching must not change what is trained, and the summary must describe the steps it watched.
The CUDA-only figures (device_busy_share, launches) come from bench/gpu_speed.py's `profile`
variant on a GPU; here the interval arithmetic behind the busy share is checked directly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.kto.helpers import metrics_of
from tests.kto.test_nonfinite import poison_reference_cache
from tests.kto.test_speed_levers import OPTIMISED, _train, _write_rows, one_thread  # noqa: F401 (autouse: one intra-op thread)
from training.kto.profiling import _union_seconds
from training.kto.trainer import NonFiniteError, TrainConfig, TrainingError, check_config


def test_profiled_steps_train_like_unprofiled_ones_and_name_their_busiest_operators(bpe_model_dir, tmp_path):
    data = _write_rows(tmp_path / "data.jsonl", 48)  # 4 optimizer steps of 12 examples
    plain_summary = _train(bpe_model_dir, data, tmp_path / "plain", **OPTIMISED)
    profiled_summary = _train(bpe_model_dir, data, tmp_path / "profiled", **OPTIMISED, profile_steps=2)

    plain, profiled = metrics_of(tmp_path / "plain"), metrics_of(tmp_path / "profiled")
    assert len(plain) == len(profiled) == 4
    for plain_step, profiled_step in zip(plain, profiled):
        for key in ("loss", "z0_raw", "grad_norm", "reward_margin"):
            assert profiled_step[key] == plain_step[key], (plain_step["step"], key)
    assert "profile" not in plain_summary and not (tmp_path / "plain" / "profile.json").exists()

    profile = json.loads((tmp_path / "profiled" / "profile.json").read_text())
    assert profiled_summary["profile"] == profile
    # Steps 2 and 3 of 4: the first step (warm-up, compilation) is never the one watched.
    assert profile["profiled_steps"] == 2
    assert 0 < profile["wall_seconds"] < profiled_summary["train_runtime_s"]
    assert profile["self_time_by"] == "host"
    assert profile["attention_implementation"] == "sdpa"  # transformers' default for Qwen2
    assert profile["kernel_launches_per_step"] == 0  # no CUDA kernels on CPU
    assert "device_busy_share" not in profile
    # Dozens of layers' worth of operators per step, each dispatched by the host.
    assert profile["operator_calls_per_step"] > 100
    operators = profile["top_operators"]
    seconds = [operator["self_seconds"] for operator in operators]
    assert seconds == sorted(seconds, reverse=True) and seconds[0] > 0
    names = {operator["name"] for operator in operators}
    # The linear layers' matrix products are among the busiest operators of a transformer step.
    assert names & {"aten::mm", "aten::addmm", "aten::bmm"}, names
    # Every listed operator ran in the watched steps; the host self time cannot exceed the wall
    # time of one thread (the test runs on one).
    assert all(operator["calls"] >= 1 for operator in operators)
    assert sum(seconds) <= profile["wall_seconds"] * 1.05
    assert "Self CPU" in (tmp_path / "profiled" / "profile.txt").read_text()


@pytest.mark.parametrize("family", ["bpe", "sentencepiece"])
def test_a_run_shorter_than_asked_is_profiled_whole(request, tmp_path, family):
    model_dir = request.getfixturevalue(f"{family}_model_dir")  # Qwen2 and Llama fixtures
    data = _write_rows(tmp_path / "data.jsonl", 24)  # 2 optimizer steps
    summary = _train(model_dir, data, tmp_path / "out", **OPTIMISED, profile_steps=5)
    assert summary["profile"]["profiled_steps"] == 2
    assert summary["profile"]["attention_implementation"] == "sdpa"
    assert summary["profile"]["operator_calls_per_step"] > 100


def test_a_run_that_aborts_while_profiled_stops_the_profiler(bpe_model_dir, tmp_path):
    """Every step non-finite (NaN reference log-probs), so the run aborts at its second step, inside
    the profiled window (steps 2-4): the profiler must not be left recording in this process."""
    data = _write_rows(tmp_path / "data.jsonl", 48)
    clean = _train(bpe_model_dir, data, tmp_path / "clean", **OPTIMISED)
    poison_reference_cache(clean["reference_cache"]["path"], how_many=None)
    with pytest.raises(NonFiniteError, match="2 optimizer steps in a row"):
        _train(bpe_model_dir, data, tmp_path / "poisoned", **OPTIMISED, profile_steps=3, max_nonfinite_steps=2)
    assert not torch.autograd.profiler._is_profiler_enabled
    assert not (tmp_path / "poisoned" / "profile.json").exists()  # no summary of a watch cut short
    # A new profile can start in this thread (it cannot while another one records).
    with torch.profiler.profile() as profile:
        torch.ones(2).add(1)
    assert any(event.name == "aten::add" for event in profile.events())


def test_busy_time_counts_overlapping_kernels_once():
    # Microseconds: two overlapping kernels (0-10, 5-20), one nested (6-8), one apart (30-40).
    assert _union_seconds([(5, 20), (0, 10), (30, 40), (6, 8)]) == pytest.approx(30e-6)
    assert _union_seconds([]) == 0


def test_a_negative_step_count_is_refused(bpe_model_dir, tmp_path):
    config = TrainConfig(model=bpe_model_dir, data="d.jsonl", out=str(tmp_path / "out"), profile_steps=-1)
    with pytest.raises(TrainingError, match="--profile-steps must be 0"):
        check_config(config)
