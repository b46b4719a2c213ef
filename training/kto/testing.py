"""Helpers for test suites: the demo model and the tokenizer-family fixtures (fixtures.py), each built
once and cached across sessions and processes."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from . import demo, fixtures
from .fixtures import ARCHITECTURES, TOKENIZER_FAMILIES, build_tokenizer, tiny_config  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("PROSPECT_CACHE_DIR") or REPO_ROOT / ".cache")


def get_or_build_demo_model() -> str:
    """Path of the demo model, building it on first use (see ``_get_or_build``)."""
    return _get_or_build("demo-model", Path(demo.__file__), demo.build_demo_model)


def demo_model_cached() -> bool:
    """Whether get_or_build_demo_model() would return at once (the build for this recipe exists)."""
    return (_cache_target("demo-model", Path(demo.__file__)) / "config.json").is_file()


def get_or_build_fixture_model(
    family: str = "bpe", architecture: str = "llama", vocab_rows: int | None = None, seed: int = 0
) -> str:
    """Path of a tokenizer-family fixture: ``family`` in TOKENIZER_FAMILIES ("bpe": byte-level BPE
    with a ChatML template; "sentencepiece": Metaspace BPE with BOS and an [INST] template), a tiny
    random ``architecture`` model on it, ``vocab_rows`` embedding rows (default: the tokenizer's
    size; e.g. 32000 for a realistic LM head). Built in seconds, cached like the demo model."""
    name = f"fixture-{family}-{architecture}-v{vocab_rows or 0}-s{seed}"
    return _get_or_build(
        name,
        Path(fixtures.__file__),
        lambda out: fixtures.build_fixture_model(out, family, architecture, seed=seed, vocab_rows=vocab_rows),
    )


def _cache_target(name: str, recipe: Path) -> Path:
    return cache_dir() / f"{name}-{hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]}"


def _get_or_build(name: str, recipe: Path, build) -> str:
    """Cached under $PROSPECT_CACHE_DIR (default <repo>/.cache) in a directory named by the hash of
    the recipe's source, so a changed recipe builds anew. A file lock makes concurrent processes
    wait for one build instead of building twice; the build goes to a temporary directory renamed
    into place, so a crash never leaves half a model behind.
    """
    target = _cache_target(name, recipe)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    if (target / "config.json").is_file():
        return str(target)
    with open(root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").is_file():  # another process built it while we waited
            return str(target)
        temporary = root / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        build(temporary)
        os.replace(temporary, target)
    return str(target)
