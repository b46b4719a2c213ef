"""The training subprocess crashes: the run fails with the error shown, and nothing else changes."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.loop_backend.conftest import run_dirs, run_status, wait_for
from training import runs
from training.models import ModelVersion, TrainingRun
from training.selectors import active_version

pytestmark = pytest.mark.slow


def test_engine_crash_fails_the_run_and_changes_nothing_else(demo_loop, start_worker, loop_redis, data_dir, tmp_path):
    # A "model" directory with no weights in it: the engine cannot load it and exits non-zero.
    broken_dir = tmp_path / "not-a-model"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_text('{"model_type": "no-such-architecture"}')
    broken = ModelVersion.objects.create(name="broken", base_model=str(broken_dir), artifact_path=str(broken_dir))
    versions_before = set(ModelVersion.objects.values_list("pk", "status"))
    worker = start_worker("gpu")

    run = runs.start_run(base_version=broken)
    snapshot_sha = hashlib.sha256(Path(run.snapshot.path).read_bytes()).hexdigest()
    wait_for(lambda: run_status(run.pk) not in ("queued", "running"), 240, "the run to end",
             on_timeout=worker.log)

    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED, run.error
    assert run.exit_code not in (None, 0)
    assert run.error.startswith(f"training exited with code {run.exit_code}")
    # The engine's own message (its stderr tail) is what the admin sees.
    assert "no-such-architecture" in run.error or "not-a-model" in run.error, run.error
    assert len(run_dirs(data_dir, run.pk)) == 1
    # Nothing else changed: no new version, the same active version, the snapshot file untouched.
    assert set(ModelVersion.objects.values_list("pk", "status")) == versions_before
    assert active_version() == demo_loop
    assert hashlib.sha256(Path(run.snapshot.path).read_bytes()).hexdigest() == snapshot_sha == run.snapshot.sha256
