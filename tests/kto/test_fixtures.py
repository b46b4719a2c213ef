"""The tokenizer-family fixtures build offline, identically everywhere, with the shapes asked for."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.kto import fixtures

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_HASH = (
    "import hashlib; from training.kto.fixtures import build_tokenizer; "
    "print(hashlib.sha256(build_tokenizer({family!r}).backend_tokenizer.to_str().encode()).hexdigest())"
)


@pytest.mark.parametrize("family", fixtures.TOKENIZER_FAMILIES)
def test_tokenizer_training_is_identical_across_processes_and_thread_counts(family):
    digests = set()
    for threads in ("1", "2"):
        env = dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        result = subprocess.run(
            [sys.executable, "-c", TOKENIZER_HASH.format(family=family)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digests.add(result.stdout.strip())
    in_process = fixtures.build_tokenizer(family).backend_tokenizer.to_str().encode()
    digests.add(hashlib.sha256(in_process).hexdigest())
    assert len(digests) == 1


def test_fixture_models_build_bit_identically_with_the_vocab_rows_asked_for(tmp_path):
    from transformers import AutoConfig

    paths = [fixtures.build_fixture_model(tmp_path / name, "bpe", "llama", vocab_rows=32000) for name in "ab"]
    assert AutoConfig.from_pretrained(paths[0]).vocab_size == 32000
    weights = [(Path(path) / "model.safetensors").read_bytes() for path in paths]
    assert weights[0] == weights[1]


def test_cached_fixtures_have_their_tokenizer_and_model(bpe_model_dir, sentencepiece_model_dir):
    from transformers import AutoConfig

    from training.kto.modeling import load_tokenizer

    for path, model_type, eos in (
        (bpe_model_dir, "qwen2", "<|endoftext|>"),
        (sentencepiece_model_dir, "llama", "</s>"),
    ):
        tokenizer = load_tokenizer(path)
        assert AutoConfig.from_pretrained(path).model_type == model_type
        assert tokenizer.eos_token == eos and tokenizer.chat_template
        assert AutoConfig.from_pretrained(path).vocab_size == len(tokenizer)
    assert load_tokenizer(sentencepiece_model_dir).bos_token == "<s>"
    assert load_tokenizer(bpe_model_dir).bos_token is None
