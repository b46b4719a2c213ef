"""Shared by the `demo` and `simulate_annotators` commands: the offline demo model and its version."""

from __future__ import annotations

from pathlib import Path

from training import registry, selectors
from training.kto.testing import cache_dir, get_or_build_demo_model


def ensure_demo_model(say) -> Path:
    """The offline demo model, built (a minute or two of CPU) the first time, then cached.

    The one builder is the engine's get_or_build_demo_model: under $PROSPECT_CACHE_DIR, keyed by
    the recipe's hash, locked against a concurrent build and renamed into place when complete.
    """
    say(f"demo model: cached under {cache_dir()} (built once, a minute or two of CPU, when missing)")
    return Path(get_or_build_demo_model())


def ensure_active_version(say):
    """The active version; on a fresh database the demo model becomes the first one."""
    active = selectors.active_version()
    if active is not None:
        return active
    return registry.ensure_base_version(str(ensure_demo_model(say)))
