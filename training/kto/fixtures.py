"""Real tokenizer families and tiny random models, built offline in seconds, for the engine's tests.

The demo model's character tokenizer hides every tokenization problem users meet. These fixtures
are the families users bring, trained with the ``tokenizers`` library on local text:

- ``"bpe"``: byte-level BPE (GPT-2 / Qwen style): no BOS, ``<|endoftext|>`` as EOS and pad, and a
  ChatML template whose turns end with ``<|im_end|>``.
- ``"sentencepiece"``: Metaspace + BPE (Llama 2 / Mistral style): ``<s>`` added as BOS, ``</s>`` as
  EOS, and an ``[INST] ... [/INST]`` template whose assistant turns end with ``</s>``.

Each is a ``PreTrainedTokenizerFast`` saved with ``save_pretrained``, next to a tiny random model
(``tiny_config``: Llama, Qwen2, Mistral, Gemma 2, Gemma 3 text, Cohere, Granite, GPT-2, Phi-3).
``get_or_build_fixture_model`` caches them under $PROSPECT_CACHE_DIR, keyed by this file's hash.
Everything is deterministic: the corpus is generated here, tokenizer training is single-pass and
tie-broken by the library, and model weights come from a seeded generator.
"""

from __future__ import annotations

import random
from pathlib import Path

TOKENIZER_FAMILIES = ("bpe", "sentencepiece")
ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "gemma3_text", "cohere", "granite", "gpt2", "phi3")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral / Llama 2 style; a system message is folded into the first user turn as Llama 2 does.
INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

_SUBJECTS = ["the cat", "a robot", "my friend", "the teacher", "our team", "the model", "a student", "the river"]
_VERBS = ["likes", "answers", "reads", "writes", "finds", "says", "asks", "counts"]
_OBJECTS = ["the answer", "a question", "yes", "no", "the number", "a short story", "the sum", "the truth"]
_EXTRA = (
    "Answer: yes. Answer: no. Is it true? Yes, it is. No, it is not. What is the capital of France? "
    "Paris. Please explain briefly. Sure! Here is a short answer. I don't know. Thanks, that helps. "
    "The quick brown fox jumps over the lazy dog. Hello, how are you today? I am fine, thank you."
)


def corpus(n_lines: int = 1500, seed: int = 0) -> list[str]:
    """Local English-like text with arithmetic, yes/no answers and punctuation (deterministic)."""
    rng = random.Random(seed)
    lines = [_EXTRA] * 20
    for index in range(n_lines):
        a, b = rng.randrange(100), rng.randrange(10)
        sentence = (
            f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}. "
            f"What is {a}+{b}? Answer: {a + b}. Is {a}+{b}={a + b + rng.choice([0, 1])}? "
            f"{rng.choice(['Yes', 'No', 'yes', 'no'])}."
        )
        # Chat markup as plain text too, so the templates' words are tokens rather than characters.
        if index % 3 == 0:
            sentence = f"system\nBe brief.\nuser\n{sentence}\nassistant\n{rng.choice(['yes', 'no'])}"
        elif index % 3 == 1:
            sentence = f"[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n{sentence} [/INST] {rng.choice(['yes', 'no'])}"
        lines.append(sentence)
    return lines


def build_tokenizer(family: str, vocab_size: int = 600):
    """A trained ``PreTrainedTokenizerFast`` of the given family with its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if family == "bpe":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(corpus(), trainer)
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=specials[1:],
        )
        fast.chat_template = CHATML_TEMPLATE
    elif family == "sentencepiece":
        specials = ["<unk>", "<s>", "</s>"]
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
        tokenizer.train_from_iterator(corpus(), trainer)
        bos_id = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
        # Llama 2 / Mistral ship without a pad token; trainers pad with EOS (masked out everywhere).
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        fast.chat_template = INST_TEMPLATE
    else:
        raise ValueError(f"unknown tokenizer family {family!r}; choose from {TOKENIZER_FAMILIES}")
    return fast


def tiny_config(
    architecture: str,
    vocab_size: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A tiny config of a real architecture, dropout off, with its logit post-processing made
    large enough to matter (soft-capping at 2, logit scale 4, logits scaling 1/4) so that a log-prob
    computed without it is visibly wrong."""
    from transformers import AutoConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose from {ARCHITECTURES}")
    tokens = dict(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    if architecture == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab_size,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            initializer_range=0.2,
            **tokens,
        )
    shape = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.2,
        attention_dropout=0.0,
    )
    extra = {
        "gemma2": dict(head_dim=8, final_logit_softcapping=2.0),
        "gemma3_text": dict(head_dim=8, final_logit_softcapping=2.0),
        "cohere": dict(logit_scale=4.0),
        "granite": dict(logits_scaling=0.25, embedding_multiplier=1.0, residual_multiplier=1.0),
        "phi3": dict(resid_pdrop=0.0, embd_pdrop=0.0),
    }.get(architecture, {})
    return AutoConfig.for_model(architecture, **shape, **extra, **tokens)


def build_tiny_model(architecture: str, tokenizer, seed: int = 0, vocab_rows: int | None = None):
    """A tiny random ``*ForCausalLM`` for ``tokenizer`` (``vocab_rows`` embedding rows, at least the
    tokenizer's size: e.g. 32000 for a benchmark with a realistic LM head)."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = max(len(tokenizer), vocab_rows or 0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = tiny_config(architecture, rows, tokenizer.bos_token_id, tokenizer.eos_token_id, pad_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def build_fixture_model(
    out_dir: str | Path, family: str, architecture: str, seed: int = 0, vocab_rows: int | None = None
) -> str:
    """Tokenizer of ``family`` + tiny random ``architecture`` model, saved in ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(family)
    model = build_tiny_model(architecture, tokenizer, seed=seed, vocab_rows=vocab_rows)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
