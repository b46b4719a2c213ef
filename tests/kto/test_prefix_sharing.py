"""Prefix sharing in the no-gradient reference passes: a prompt's matched and mismatched sequences
are scored as one tree (the prompt computed once), with exactly the log-probs each sequence gets
alone, on both real tokenizer families, and with fewer positions computed."""

from __future__ import annotations

import pytest
import torch

from tests.kto.helpers import metrics_of
from tests.kto.test_speed_levers import _train, _write_rows, one_thread  # noqa: F401 (autouse: one intra-op thread)
from training.kto import data as kto_data
from training.kto import modeling, trainer
from training.kto.fixtures import ARCHITECTURES, tiny_config
from training.kto.modeling import SequenceLogProbs, load_causal_lm, load_tokenizer
from training.kto.trainer import score_no_grad


def test_a_tree_holds_the_prompt_once_and_each_branch_continues_its_positions():
    joined = [([1, 2, 3, 4, 5], 3), ([1, 2, 3, 9], 3), ([7, 8], 1)]
    trees = kto_data.prefix_trees(joined, width_limit=20)
    assert trees == [[0, 1], [2]]
    packed = kto_data.pack(joined, pad_token_id=0, trees=trees)
    # Tree 0: [1, 2] shared, then [3, 4, 5] and [3, 9]: the last prompt token is repeated per
    # branch, at the same position, so it can predict that branch's first completion token.
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 3, 9], [7, 8, 0, 0, 0, 0, 0]]
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 2, 3]
    assert packed["sequence_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert packed["completion_mask"][0].tolist() == [False, False, False, True, True, False, True]
    assert packed["branch_ids"][0].tolist() == [0, 0, 1, 1, 1, 2, 2]
    # Branch 2 sees the shared prompt and itself, never branch 1; padding sees only itself.
    mask = modeling.tree_attention_mask(packed["tree_ids"], packed["branch_ids"], "sdpa")[:, 0]
    assert mask[0, 6].tolist() == [True, True, False, False, False, True, True]
    assert mask[0, 4].tolist() == [True, True, True, True, True, False, False]
    assert mask[1, 3].tolist() == [False, False, False, True, False, False, False]
    additive = modeling.tree_attention_mask(packed["tree_ids"], packed["branch_ids"], "eager")
    assert torch.equal(additive == 0, mask.unsqueeze(1))


def test_trees_group_identical_prompts_within_the_width_limit():
    prompt = [5, 6, 7, 8]
    joined = [
        (prompt + [1, 1], 4),
        ([9, 9] + [1], 2),
        (prompt + [2, 2, 2], 4),
        (prompt + [3], 4),
        ([4, 4], 0),
        ([4, 4], 0),
    ]
    # Lengths: the shared part is 3 tokens; branches are 3, 4 and 2 tokens.
    assert kto_data.prefix_trees(joined, width_limit=12) == [[0, 2, 3], [1], [4], [5]]
    assert kto_data.prefix_trees(joined, width_limit=10) == [[0, 2], [1], [3], [4], [5]]  # by first member
    assert kto_data.tree_length(joined, [0, 2, 3]) == 3 + 3 + 4 + 2
    # No tree at all (every sequence alone): exactly the plain packed rows, no custom mask.
    plain = kto_data.pack(joined, pad_token_id=0)
    alone = kto_data.pack(joined, pad_token_id=0, trees=[[i] for i in range(len(joined))])
    assert "tree_ids" not in plain and "tree_ids" not in alone
    assert all(torch.equal(plain[key], alone[key]) for key in ("input_ids", "position_ids", "sequence_ids"))


def test_prompts_that_begin_alike_share_their_common_prefix():
    system = list(range(100, 140))  # 40 tokens, above MIN_SHARED_PREFIX
    joined = [
        (system + [1, 2] + [50, 51], 42),  # system + user turn A, completion
        ([7, 8, 9], 2),  # shares nothing
        (system + [1, 2] + [60], 42),  # the same prompt, another completion
        (system + [3] + [70, 71, 72], 41),  # system + user turn B
        (system[:20] + [9] + [80], 21),  # only 20 tokens in common: below the minimum
    ]
    trees = kto_data.prefix_trees(joined, width_limit=200)
    assert trees == [[0, 2, 3], [1], [4]]
    # The common prefix is the system prompt (40 tokens); each branch carries the rest of its prompt.
    assert kto_data.shared_length(joined, [0, 2, 3]) == 40
    assert kto_data.shared_length(joined, [0, 2]) == 41  # identical prompts: all but the last token
    assert kto_data.tree_length(joined, [0, 2, 3]) == 40 + 4 + 3 + 4
    packed = kto_data.pack(joined, pad_token_id=0, trees=trees)
    row = packed["sequence_ids"][0].tolist()
    assert row[:40] == [0] * 40 and row[40:51] == [0] * 4 + [2] * 3 + [3] * 4
    assert packed["position_ids"][0, 40:51].tolist() == [40, 41, 42, 43, 40, 41, 42, 40, 41, 42, 43]
    assert packed["branch_ids"][0, 38:51].tolist() == [0, 0] + [1] * 4 + [2] * 3 + [3] * 4
    # Scored positions (predicting a completion token) are the completions' own: 2, 1 and 3 tokens.
    assert packed["completion_mask"][0, 40:51].tolist() == [False, False, True, True] + [False, False, True] + [
        False,
        True,
        True,
        True,
    ]
    # A tree never saves fewer tokens by taking one more member, nor outgrows its width.
    assert kto_data.prefix_trees(joined, width_limit=50) == [[0, 2], [1], [3], [4]]
    assert kto_data.prefix_trees(joined, width_limit=200, min_shared=41) == [[0, 2], [1], [3], [4]]


class CountingModule(torch.nn.Module):
    """Records the positions of every call (rows × width) and whether it shared prompts."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls: list[tuple[int, bool]] = []

    def forward(self, **inputs):
        self.calls.append((inputs["input_ids"].numel(), inputs.get("tree_ids") is not None))
        return self.module(**inputs)


# A product's system prompt: every prompt begins with these (well over MIN_SHARED_PREFIX) tokens.
SYSTEM = "You are the shop assistant of a robot store. " * 6


def _matched_and_mismatched(tokenizer, n: int = 12, system: str = "") -> list[tuple[list[int], int]]:
    """Every prompt with its own completion and with the next one's, as the reference pass sees them."""
    prompts = [f"{system}Question {i}: what does the robot write about the number {i * 7}?" for i in range(n)]
    completions = [" " + "the answer is yes " * (1 + i % 3) for i in range(n)]
    prompt_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    completion_ids = [
        tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in completions
    ]
    joined = [(prompt_ids[i] + completion_ids[i], len(prompt_ids[i])) for i in range(n)]
    joined += [(prompt_ids[i] + completion_ids[(i + 1) % n], len(prompt_ids[i])) for i in range(n)]
    return joined


@pytest.mark.parametrize("system", ["", SYSTEM], ids=["own-prompts", "system-prompt"])
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_shared_prompts_score_exactly_what_each_sequence_scores_alone(family_model_dir, backend, system):
    tokenizer = load_tokenizer(family_model_dir)
    model = load_causal_lm(family_model_dir)
    model.config._attn_implementation = backend
    policy = SequenceLogProbs(model, logits_chunk_size=7)
    policy.verify()
    assert policy.packing_supported and policy.prefix_sharing_supported
    joined = _matched_and_mismatched(tokenizer, system=system)
    counted = CountingModule(policy)
    padded = score_no_grad(policy, joined, 0, tokenizer.pad_token_id, packing=False, device="cpu")
    for budget in (0, 300):
        counted.calls.clear()
        shared = score_no_grad(counted, joined, budget, tokenizer.pad_token_id, True, "cpu", share_prefixes=True)
        # Sums of ~30 token log-probs (about -100): fp32 rounding is ~1e-7 of that.
        torch.testing.assert_close(shared, padded, rtol=1e-6, atol=1e-5)
        # Own prompts pair up in every call; a system prompt's trees fill the width, which can leave one alone.
        assert (all if not system else any)(tree for _, tree in counted.calls)
        if budget:
            assert len(counted.calls) > 1  # trees kept whole across several calls
    # The point of it: fewer positions than packing each sequence apart.
    with_sharing = sum(positions for positions, _ in counted.calls)
    counted.calls.clear()
    score_no_grad(counted, joined, 0, tokenizer.pad_token_id, True, "cpu", share_prefixes=False)
    without = sum(positions for positions, _ in counted.calls)
    # Own prompts: each computed once instead of twice. A system prompt: once per tree, across prompts.
    assert with_sharing < (0.8 if not system else 0.5) * without, (with_sharing, without)


def test_a_wrong_mask_turns_sharing_off(bpe_model_dir, monkeypatch):
    # A mask that lets a branch see the branches before it (plain causal within a tree) is caught
    # by verify(), which then leaves sharing off rather than train on wrong log-probs.
    leaky = modeling.tree_attention_mask

    def causal_within_tree(tree_ids, branch_ids, backend, *window):
        return leaky(tree_ids, torch.zeros_like(branch_ids), backend, *window)

    monkeypatch.setattr(modeling, "tree_attention_mask", causal_within_tree)
    policy = SequenceLogProbs(load_causal_lm(bpe_model_dir))
    policy.verify()
    assert policy.packing_supported and not policy.prefix_sharing_supported


def _window_model(architecture: str, window: int):
    """A tiny model whose sliding-window layers (all of Mistral's; Gemma's and Qwen2's by layer type)
    see only ``window`` positions back, far fewer than the sequences below."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(architecture, 300, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    text = config.get_text_config()
    text.sliding_window = window
    if architecture == "qwen2":
        text.use_sliding_window = True
        text.layer_types = ["full_attention"] + ["sliding_attention"] * (text.num_hidden_layers - 1)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("architecture", ["mistral", "gemma2", "gemma3_text", "qwen2"])
def test_sliding_window_layers_keep_their_window_in_shared_rows(architecture):
    assert architecture in ARCHITECTURES
    policy = SequenceLogProbs(_window_model(architecture, window=4))
    policy.verify()
    assert policy.prefix_sharing_supported
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (9, 14, 6)]
    completions = [torch.randint(3, 300, (n,), generator=generator).tolist() for n in (5, 8, 11)]
    system = torch.randint(3, 300, (40,), generator=generator).tolist()
    joined = [(prompts[i] + completions[j], len(prompts[i])) for i in range(3) for j in range(3)]
    # The same prompts after a common 40-token system prompt: trees across prompts.
    joined += [(system + prompts[i] + completions[i], 40 + len(prompts[i])) for i in range(3)]
    assert [len(tree) for tree in kto_data.prefix_trees(joined, width_limit=200)] == [3, 3, 3, 3]
    padded = score_no_grad(policy, joined, 0, 0, packing=False, device="cpu")
    shared = score_no_grad(policy, joined, 0, 0, packing=True, device="cpu", share_prefixes=True)
    torch.testing.assert_close(shared, padded, rtol=1e-6, atol=1e-5)
    # The window is what makes them agree: the same trees without it see too far back.
    kind, _ = policy.mask_layout
    policy.mask_layout = (kind, None)
    unwindowed = score_no_grad(policy, joined, 0, 0, packing=True, device="cpu", share_prefixes=True)
    assert (unwindowed - padded).abs().max() > 1e-3


@pytest.mark.parametrize("token_budget", [0, 160])  # 0: the CPU default, one call per microbatch
@pytest.mark.parametrize("setup", ["full_precompute", "lora_live_reference", "system_prompt"])
def test_training_with_shared_prompts_matches_training_without(
    bpe_model_dir, sentencepiece_model_dir, tmp_path, setup, token_budget
):
    model_dir = bpe_model_dir if setup != "lora_live_reference" else sentencepiece_model_dir
    prefix = SYSTEM if setup == "system_prompt" else ""
    data = _write_rows(tmp_path / "data.jsonl", 36, prefix=prefix)
    extra = dict(lora=True, reference="copy") if setup == "lora_live_reference" else {}
    common = dict(token_budget=token_budget, packing=True, logits_chunk_size=5, **extra)
    summary_apart = _train(model_dir, data, tmp_path / "apart", prefix_sharing=False, **common)
    summary_shared = _train(model_dir, data, tmp_path / "shared", prefix_sharing=True, **common)
    assert summary_shared["speed_levers"]["prefix_sharing"] and not summary_apart["speed_levers"]["prefix_sharing"]
    apart, shared = metrics_of(tmp_path / "apart"), metrics_of(tmp_path / "shared")
    assert len(apart) == len(shared) == 3
    for step_apart, step_shared in zip(apart, shared):
        for key in ("loss", "z0_raw", "grad_norm", "reward_margin"):
            assert step_shared[key] == pytest.approx(step_apart[key], abs=1e-5), (step_apart["step"], key)


@pytest.mark.parametrize("token_budget", [0, 400])
@pytest.mark.parametrize("setup", ["full_precompute", "lora_live_reference"])
def test_mismatched_sequences_scored_in_the_grad_call_train_the_same_steps(
    bpe_model_dir, sentencepiece_model_dir, tmp_path, monkeypatch, setup, token_budget
):
    model_dir = bpe_model_dir if setup == "full_precompute" else sentencepiece_model_dir
    # Prompts of 25-40 words, completions of 1-2: each mismatched sequence is mostly prompt.
    data = _write_rows(tmp_path / "data.jsonl", 36, prompt_words=(25, 40), completion_words=(1, 2))
    extra = dict(lora=True, reference="copy") if setup == "lora_live_reference" else {}
    common = dict(token_budget=token_budget, packing=True, logits_chunk_size=5, **extra)
    merged_per_microbatch: list[int] = []
    choose = trainer.merged_positions

    def recording(microbatch, merge_ratio):
        positions = choose(microbatch, merge_ratio)
        merged_per_microbatch.append(len(positions))
        return positions

    monkeypatch.setattr(trainer, "merged_positions", recording)
    summary_apart = _train(model_dir, data, tmp_path / "apart", mismatched_in_grad_call=False, **common)
    assert summary_apart["speed_levers"]["mismatched_merge_ratio"] == 0 and not any(merged_per_microbatch)
    summary_merged = _train(model_dir, data, tmp_path / "merged", mismatched_in_grad_call=True, **common)
    assert summary_merged["speed_levers"]["mismatched_merge_ratio"] > 1
    assert sum(merged_per_microbatch) == 36  # every mismatched sequence here is mostly prompt
    apart, merged = metrics_of(tmp_path / "apart"), metrics_of(tmp_path / "merged")
    assert len(apart) == len(merged) == 3
    for step_apart, step_merged in zip(apart, merged):
        for key in ("loss", "z0_raw", "grad_norm", "reward_margin"):
            assert step_merged[key] == pytest.approx(step_apart[key], abs=1e-5), (step_apart["step"], key)
    assert apart[-1]["z0_raw"] != pytest.approx(apart[0]["z0_raw"], abs=1e-6)  # z0 moved with the weights


def test_a_short_prompt_keeps_its_mismatched_sequence_in_the_no_grad_pass():
    from training.kto.trainer import HostMicrobatch

    prompt = list(range(10, 30))
    microbatch = HostMicrobatch(
        matched=[(prompt + [1, 2], 20), ([5, 6, 7, 8], 2)],
        mismatched=[(prompt + [3, 4, 5], 20), ([5, 6, 9], 2)],
        is_desirable=torch.tensor([True, False]),
        reference_matched=None,
        reference_mismatched=None,
        n_tokens=26,
    )
    # Branch of the first: last prompt token + 3 = 4 positions; 19 shared > 4 × 4 only for ratio < 4.75.
    assert trainer.merged_positions(microbatch, 4.0) == [0]
    assert trainer.merged_positions(microbatch, 5.0) == []
    assert trainer.merged_positions(microbatch, 0.0) == []


def test_a_prompt_shared_with_another_matched_sequence_is_not_merged():
    """Its shared part is computed once by prefix sharing anyway (in both passes); merging would keep
    the matched sequence out of that tree for the few tokens left."""
    from training.kto.trainer import HostMicrobatch

    system = list(range(100, 140))  # 40 tokens: a system prompt

    def microbatch(first_prompt, second_prompt) -> HostMicrobatch:
        return HostMicrobatch(
            matched=[(first_prompt + [1, 2], len(first_prompt)), (second_prompt + [3], len(second_prompt))],
            mismatched=[(first_prompt + [3], len(first_prompt)), (second_prompt + [1, 2], len(second_prompt))],
            is_desirable=torch.tensor([True, False]),
            reference_matched=None,
            reference_mismatched=None,
            n_tokens=0,
        )

    unrelated = microbatch(system + [5, 6], list(range(200, 242)))
    assert trainer.merged_positions(unrelated, 4.0) == [0, 1]  # 41 prompt tokens against 2-3 of its own
    # Both begin with the system prompt: only the 1 token after it is left to merge for: not worth it.
    behind_system = microbatch(system + [5, 6], system + [7, 8])
    assert trainer.merged_positions(behind_system, 4.0) == []
    # The same prompt twice (two completions of one prompt): all of it is shared anyway.
    assert trainer.merged_positions(microbatch(system + [5, 6], system + [5, 6]), 4.0) == []
    # A short common start (below MIN_SHARED_PREFIX) is not shared, so it still counts for merging.
    short_start = microbatch(system[:10] + list(range(300, 331)), system[:10] + list(range(400, 431)))
    assert trainer.merged_positions(short_start, 4.0) == [0, 1]


def test_merged_branches_count_against_the_calls_token_budget():
    from training.kto.trainer import HostMicrobatch

    prompt, other_prompt = list(range(10, 30)), list(range(40, 60))  # 20 tokens each, nothing in common

    def microbatch() -> HostMicrobatch:
        return HostMicrobatch(
            matched=[(prompt + [1, 2], 20), (other_prompt + [3], 20)],
            mismatched=[(prompt + [3], 20), (other_prompt + [1, 2], 20)],
            is_desirable=torch.tensor([True, False]),
            reference_matched=None,
            reference_mismatched=None,
            n_tokens=43,
        )

    microbatches = [microbatch() for _ in range(4)]
    # Both mismatched sequences of each microbatch merge as branches: their own parts (last prompt
    # token + completion: 2 and 3 tokens) make a microbatch's call 48 tokens instead of 43.
    merged = [trainer.merged_positions(mb, 1.0) for mb in microbatches]
    assert merged == [[0, 1]] * 4
    # Two microbatches fit a budget of 95 on their matched tokens alone (86), not with branches (96).
    assert trainer.grad_units(microbatches, budget=95, packing=True) == [[0, 1], [2, 3]]
    assert trainer.grad_units(microbatches, budget=95, packing=True, merged=merged) == [[0], [1], [2], [3]]
    assert trainer.grad_units(microbatches, budget=96, packing=True, merged=merged) == [[0, 1], [2, 3]]
    # What pack lays out for a merged unit is exactly the count the budget saw.
    joined = microbatches[0].matched + microbatches[0].mismatched
    packed = kto_data.pack(joined, pad_token_id=0, trees=[[0, 2], [1, 3]])
    assert int((packed["sequence_ids"] >= 0).sum()) == 48
