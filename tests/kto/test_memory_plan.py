"""--checkpoint-policy auto: at start the engine measures, on the run's own model and sequences,
the activation bytes each policy leaves for backward, then picks the least recompute (none, then
elementwise, then layer) whose peak fits the memory limit, shrinking the token budget only when even
layer does not fit. What it picks trains to the same numbers as choosing it by hand."""

from __future__ import annotations

import pytest
import torch

from tests.kto.helpers import metrics_of
from tests.kto.test_speed_levers import OPTIMISED, _train, _write_rows, one_thread  # noqa: F401
from training.kto import data as kto_data
from training.kto import memory_plan
from training.kto.cli import build_parser
from training.kto.modeling import SequenceLogProbs, load_causal_lm, set_checkpointing
from training.kto.testing import get_or_build_fixture_model
from training.kto.trainer import TrainConfig, TrainingError, check_config

PER_TOKEN = {"off": 1000.0, "elementwise": 500.0, "layer": 100.0}
PER_CALL = {"off": 3000.0, "elementwise": 2000.0, "layer": 1000.0}  # e.g. autocast's bf16 weight copies
FIXED = 50_000
AUTO = dict(gradient_checkpointing=True, checkpoint_policy="auto")
CALL = 200  # tokens per call: the budget here; the largest microbatch is smaller


def _limit_for(peak: float) -> int:
    """The smallest limit whose usable part (less the headroom) holds ``peak`` bytes."""
    return int(peak / (1 - memory_plan.HEADROOM)) + 2


def _choose(limit: int, token_budget: int = CALL, largest_microbatch_tokens: int = 120):
    return memory_plan.choose(PER_TOKEN, PER_CALL, FIXED, limit, token_budget, largest_microbatch_tokens)


@pytest.mark.parametrize("policy", ["off", "elementwise", "layer"])
def test_the_least_recompute_that_fits_is_chosen(policy):
    exact = _limit_for(FIXED + PER_CALL[policy] + PER_TOKEN[policy] * CALL)
    plan = _choose(exact)
    assert (plan.policy, plan.token_budget, plan.fits, plan.call_tokens) == (policy, CALL, True, CALL)
    assert plan.peak_bytes() <= exact * (1 - memory_plan.HEADROOM)
    # A few bytes less and this policy no longer fits: the next one in recompute order is chosen.
    if policy != "layer":
        tighter = _choose(exact - 40)
        assert memory_plan.CANDIDATES.index(tighter.policy) == memory_plan.CANDIDATES.index(policy) + 1


def test_when_even_layer_does_not_fit_the_budget_shrinks_then_the_plan_says_it_does_not_fit():
    # Room for 150 tokens of layer activations: the budget of 200 becomes 150 (≥ the largest microbatch).
    limit = _limit_for(FIXED + PER_CALL["layer"] + PER_TOKEN["layer"] * 150)
    plan = _choose(limit)
    assert (plan.policy, plan.fits, plan.call_tokens) == ("layer", True, plan.token_budget)
    assert 149 <= plan.token_budget <= 150 and plan.peak_bytes() <= limit * (1 - memory_plan.HEADROOM)
    # Not even one microbatch of 120 tokens fits: layer, one microbatch per call, and said so.
    limit = _limit_for(FIXED + PER_CALL["layer"] + PER_TOKEN["layer"] * 100)
    plan = _choose(limit)
    assert (plan.policy, plan.token_budget, plan.fits, plan.call_tokens) == ("layer", 0, False, 120)
    assert "DOES NOT FIT" in plan.describe()
    # Without a budget (one microbatch per call) a microbatch is the call.
    plan = _choose(10**12, token_budget=0)
    assert (plan.policy, plan.call_tokens) == ("off", 120)


@pytest.mark.parametrize(
    "family, architecture, lora",
    [("bpe", "qwen2", False), ("sentencepiece", "llama", True), ("bpe", "gemma3_text", False)],
)
def test_measuring_ranks_the_policies_on_the_real_model_and_leaves_no_trace(family, architecture, lora):
    model = load_causal_lm(get_or_build_fixture_model(family, architecture))
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    policy = SequenceLogProbs(model, logits_chunk_size=7).eval()  # as the trainer holds it before the loop
    generator = torch.Generator().manual_seed(0)
    calls = []
    for lengths in ((45, 35, 20), (90, 70, 40)):
        joined = [(torch.randint(3, 200, (n,), generator=generator).tolist(), n // 3) for n in lengths]
        calls.append((dict(kto_data.pack(joined, pad_token_id=0), n_sequences=len(joined)), sum(lengths)))
    rng_before = torch.random.get_rng_state()
    per_token, per_call = memory_plan.measure(policy, *calls)
    assert per_token["off"] > per_token["elementwise"] > per_token["layer"] > 0, per_token
    # The weights are not activations: what does not grow with tokens is far below their size.
    weights = memory_plan.weight_bytes(model)
    assert all(0 <= per_call[policy] < 0.1 * weights for policy in memory_plan.CANDIDATES), (per_call, weights)
    # The draws after measuring are the draws without it (dropout masks stay the same) ...
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert not policy.training
    # ... and the model is left as the last measured policy set it: the trainer then sets its choice.
    set_checkpointing(model, "off")
    assert not any(getattr(module, "gradient_checkpointing", False) for module in model.modules())
    set_checkpointing(model, "layer")
    assert any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def test_auto_picks_by_the_limit_and_trains_like_the_policy_it_picks(bpe_model_dir, tmp_path):
    data = _write_rows(tmp_path / "data.jsonl", 36)
    roomy = _train(bpe_model_dir, data, tmp_path / "roomy", **OPTIMISED, **AUTO, memory_limit_gib=1e3)
    plan = roomy["memory_plan"]
    assert (plan["policy"], roomy["speed_levers"]["checkpointing"], plan["fits"]) == ("off", "off", True)
    assert plan["limit_bytes"] == 1000 * memory_plan.GIB and plan["token_budget"] == OPTIMISED["token_budget"]
    per_token, per_call = plan["activation_bytes_per_token"], plan["activation_bytes_per_call"]
    assert per_token["off"] > per_token["elementwise"] > per_token["layer"] > 0, per_token

    def peak(policy: str) -> float:
        return memory_plan.peak_bytes(plan["fixed_bytes"], per_token, per_call, policy, plan["call_tokens"])

    # Limits between two policies' peaks, from the measured figures: the cheaper recompute is out of reach.
    runs = {"off": metrics_of(tmp_path / "roomy")}
    for policy, above in (("elementwise", "off"), ("layer", "elementwise")):
        limit_gib = (_limit_for(peak(policy)) + _limit_for(peak(above))) / 2 / memory_plan.GIB
        summary = _train(bpe_model_dir, data, tmp_path / policy, **OPTIMISED, **AUTO, memory_limit_gib=limit_gib)
        assert summary["speed_levers"]["checkpointing"] == summary["memory_plan"]["policy"] == policy
        # The same count every run: it depends on the model and the data, not on the machine or the moment.
        assert summary["memory_plan"]["activation_bytes_per_token"] == per_token
        assert summary["memory_plan"]["activation_bytes_per_call"] == per_call
        runs[policy] = metrics_of(tmp_path / policy)
    for policy in ("elementwise", "layer"):  # 1e-5: as test_checkpoint_policy.py, for the same reason
        for plain, checkpointed in zip(runs["off"], runs[policy], strict=True):
            for key in ("loss", "z0_raw", "grad_norm"):
                assert checkpointed[key] == pytest.approx(plain[key], abs=1e-5), (policy, plain["step"], key)


def test_the_options_are_parsed_and_a_bad_limit_is_named(tmp_path):
    args = build_parser().parse_args(
        "train --model M --data D --out O --checkpoint-policy auto --memory-limit-gib 20".split()
    )
    assert (args.checkpoint_policy, args.memory_limit_gib) == ("auto", 20.0)
    config = TrainConfig(model=str(tmp_path), data="d", out="o", checkpoint_policy="auto", memory_limit_gib=-1)
    with pytest.raises(TrainingError, match="--memory-limit-gib must be 0 .* got -1"):
        check_config(config)


def test_a_policy_whose_measuring_call_runs_out_of_memory_is_not_chosen(bpe_model_dir):
    """On a small card the measuring call without checkpointing can itself run out of memory: that
    policy is then out of reach, the others are still measured and chosen from, and the model is left
    working. The device's refusal is played by a hook on the first decoder layer that raises what
    CUDA raises, whenever that layer runs with gradient and without checkpointing."""
    model = load_causal_lm(bpe_model_dir)
    model.config.use_cache = False
    policy = SequenceLogProbs(model, logits_chunk_size=7)
    first_layer = model.model.layers[0]

    def no_room_without_checkpointing(module, args):
        if torch.is_grad_enabled() and not getattr(module, "gradient_checkpointing", False):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    hook = first_layer.register_forward_pre_hook(no_room_without_checkpointing)
    generator = torch.Generator().manual_seed(0)
    calls = []
    for lengths in ((30, 20), (60, 40)):
        joined = [(torch.randint(3, 200, (n,), generator=generator).tolist(), n // 3) for n in lengths]
        calls.append((dict(kto_data.pack(joined, pad_token_id=0), n_sequences=len(joined)), sum(lengths)))
    try:
        per_token, per_call = memory_plan.measure(policy, *calls)
    finally:
        hook.remove()
    assert per_token["off"] == float("inf") and 0 < per_token["layer"] < per_token["elementwise"] < float("inf")
    plan = memory_plan.choose(per_token, per_call, FIXED, 10**12, token_budget=CALL, largest_microbatch_tokens=120)
    assert plan.policy == "elementwise" and plan.fits
    assert plan.to_dict()["activation_bytes_per_token"]["off"] is None  # JSON has no infinity
    assert "off out of memory when measured" in plan.describe()
    # Layer too out of reach: nothing fits, and the plan says so rather than failing.
    stuck = memory_plan.choose(dict.fromkeys(memory_plan.CANDIDATES, float("inf")), per_call, FIXED, 10**12, CALL, 120)
    assert (stuck.policy, stuck.fits, stuck.to_dict()["peak_bytes"]) == ("layer", False, None)
    set_checkpointing(model, "off")
    with torch.no_grad():
        assert torch.isfinite(policy(**calls[0][0])[0]).all()
