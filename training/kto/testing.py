"""Helpers for test suites: the demo model built once and cached across sessions and processes."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

from . import demo

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("PROSPECT_CACHE_DIR") or REPO_ROOT / ".cache")


def get_or_build_demo_model() -> str:
    """Path of the demo model, building it on first use.

    Cached under $PROSPECT_CACHE_DIR (default <repo>/.cache) in a directory named by the hash of
    demo.py's source, so a changed recipe builds a new model. A file lock makes concurrent
    processes wait for one build instead of building twice; the build goes to a temporary
    directory renamed into place, so a crash never leaves half a model behind.
    """
    source_hash = hashlib.sha256(Path(demo.__file__).read_bytes()).hexdigest()[:16]
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"demo-model-{source_hash}"
    if (target / "config.json").is_file():
        return str(target)
    with open(root / f"demo-model-{source_hash}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "config.json").is_file():  # another process built it while we waited
            return str(target)
        temporary = root / f".demo-model-{source_hash}.tmp-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        demo.build_demo_model(temporary)
        os.replace(temporary, target)
    return str(target)
