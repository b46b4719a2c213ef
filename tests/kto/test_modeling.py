"""The engine's log-probs are log_softmax of the logits each architecture's own forward() returns."""

from __future__ import annotations

import pytest
import torch

from training.kto.fixtures import ARCHITECTURES, tiny_config
from training.kto.modeling import SequenceLogProbs, UnsupportedModelError

VOCAB = 300


def tiny_model(architecture: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = tiny_config(architecture, VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def right_padded_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, VOCAB, (3, 20), generator=generator)
    lengths, prompt_lengths = [20, 14, 9], [6, 10, 2]
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (length, prompt_length) in enumerate(zip(lengths, prompt_lengths)):
        attention_mask[row, :length] = 1
        completion_mask[row, prompt_length:length] = True
        input_ids[row, length:] = 0
    return input_ids, attention_mask, completion_mask


def forward_token_logps(model, input_ids, attention_mask, completion_mask):
    """What generation samples from: the model's own forward over the whole sequence."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logps * completion_mask[:, 1:]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@torch.no_grad()
def test_log_probs_equal_the_models_own_forward(architecture):
    model = tiny_model(architecture)
    input_ids, attention_mask, completion_mask = right_padded_batch()
    expected = forward_token_logps(model, input_ids, attention_mask, completion_mask)
    engine = SequenceLogProbs(model)

    per_token, rows, predicts = engine.token_logps(input_ids, attention_mask, completion_mask)
    torch.testing.assert_close(per_token, expected[predicts], rtol=0, atol=1e-5)
    assert rows.tolist() == [0] * 14 + [1] * 4 + [2] * 7

    logps, token_counts = engine(input_ids, attention_mask, completion_mask)  # sums of ~15 tokens
    torch.testing.assert_close(logps, expected.sum(-1), rtol=1e-6, atol=1e-5)
    assert token_counts.tolist() == [14, 4, 7]
    engine.verify()  # and the start-up check agrees


@pytest.mark.parametrize(
    "architecture, setting",
    [
        ("gemma2", "final_logit_softcapping"),
        ("gemma3_text", "final_logit_softcapping"),
        ("cohere", "logit_scale"),
        ("granite", "logits_scaling"),
    ],
)
@torch.no_grad()
def test_logit_post_processing_is_applied(architecture, setting):
    """The fixtures' post-processing is large enough to matter: the LM head alone is far off."""
    model = tiny_model(architecture)
    assert getattr(model.config, setting) not in (None, 1.0)
    input_ids, attention_mask, completion_mask = right_padded_batch()
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    head_only = torch.log_softmax(model.get_output_embeddings()(hidden)[:, :-1], -1)
    head_only = head_only.gather(-1, input_ids[:, 1:, None]).squeeze(-1) * completion_mask[:, 1:]
    engine_logps, _ = SequenceLogProbs(model)(input_ids, attention_mask, completion_mask)
    assert (engine_logps - head_only.sum(-1)).abs().max() > 1.0


class _IgnoresKeptPositions(torch.nn.Module):
    """A causal LM whose forward returns logits for every position whatever logits_to_keep says."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


class _PositionDependentHead(torch.nn.Module):
    """A causal LM whose logit post-processing depends on the position: selecting positions
    before the head would silently change it."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, input_ids, attention_mask=None, use_cache=False, logits_to_keep=0):
        output = self.inner(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)
        output.logits = output.logits * torch.linspace(0.5, 2.0, output.logits.shape[-2])[:, None]
        return output


@pytest.mark.parametrize(
    "wrapper, message",
    [(_IgnoresKeptPositions, "ignores a boolean logits_to_keep"), (_PositionDependentHead, "differ from log_softmax")],
)
def test_an_architecture_that_cannot_be_reproduced_is_refused_at_start(wrapper, message):
    model = wrapper(tiny_model("llama"))
    model.config = model.inner.config  # the probe reads the vocabulary size from it
    with pytest.raises(UnsupportedModelError, match=message):
        SequenceLogProbs(model).verify()


@torch.no_grad()
def test_a_transformers_release_that_rejects_a_per_row_logits_mask_still_gets_exact_log_probs():
    """transformers before 5.2x slices logits_to_keep as positions shared by every row and raises
    IndexError on the engine's per-row mask (seen on a GPU host with 5.17): the engine then asks for
    every position's logits and keeps the completion ones itself, with the same numbers."""
    model = tiny_model("llama")
    input_ids, attention_mask, completion_mask = right_padded_batch()
    expected = forward_token_logps(model, input_ids, attention_mask, completion_mask)
    forward_of_this_release = model.forward

    def forward_of_an_older_release(*args, logits_to_keep=0, **kwargs):
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 2:
            raise IndexError("too many indices for tensor of dimension 3")
        return forward_of_this_release(*args, logits_to_keep=logits_to_keep, **kwargs)

    model.forward = forward_of_an_older_release
    engine = SequenceLogProbs(model)  # no chunked head: the path FSDP takes
    engine.verify()
    assert engine.mask_logits_to_keep is False
    per_token, _, predicts = engine.token_logps(input_ids, attention_mask, completion_mask)
    torch.testing.assert_close(per_token, expected[predicts], rtol=0, atol=1e-5)
