"""Shared by the `demo` and `simulate_annotators` commands: the offline demo model and its version."""
from __future__ import annotations

from pathlib import Path

from django.conf import settings


def demo_model_dir() -> Path:
    return Path(settings.DATA_DIR) / "demo-model"


def ensure_demo_model(say) -> Path:
    """DATA_DIR/demo-model, built (offline, a minute or two of CPU) the first time."""
    model_dir = demo_model_dir()
    if (model_dir / "config.json").exists():
        say(f"demo model: {model_dir}")
        return model_dir
    from training.kto.demo import build_demo_model

    say(f"building the offline demo model in {model_dir} (a minute or two of CPU, once)")
    build_demo_model(str(model_dir))
    return model_dir


def ensure_active_version(say):
    """The active version; on a fresh database the demo model becomes the first one."""
    from training import selectors, services

    active = selectors.active_version()
    if active is not None:
        return active
    return services.ensure_base_version(str(ensure_demo_model(say)))
