"""A snapshot's file is linked into place before its transaction commits. When the transaction
rolls back after the cut (a run that cannot be created, a refused follow-up), the row goes and the
file must go with it: no snapshot file is left on disk without a row."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from feedback.models import DatasetSnapshot, Job
from feedback.services import jobs
from feedback.services.snapshots import snapshot_dir
from projects.selectors import default_project
from tests.feedback.helpers import add_labelled_examples
from tests.training.helpers import loadable_artifact
from training import registry, runs
from training.models import TrainingRun


@pytest.fixture
def votes(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "var"
    add_labelled_examples(6, 4)


def snapshot_files() -> list[str]:
    return sorted(path.name for path in snapshot_dir().iterdir())


def test_a_run_that_fails_after_cutting_its_snapshot_leaves_no_snapshot_file(votes, tmp_path, monkeypatch):
    registry.ensure_base_version(loadable_artifact(tmp_path / "base"))

    def refuse(snapshot, config):
        assert DatasetSnapshot.objects.filter(pk=snapshot.pk).exists() and snapshot_files()  # cut and linked
        raise ValidationError({"desirable_weight": "refused after the cut"})

    monkeypatch.setattr(runs, "class_weights_for", refuse)
    with pytest.raises(ValidationError, match="refused after the cut"):
        runs.start_run(config={"holdout": 0})
    assert not DatasetSnapshot.objects.exists() and not TrainingRun.objects.exists()
    assert snapshot_files() == []

    monkeypatch.undo()  # the same call, nothing failing: the run and its snapshot's file stay
    run = runs.start_run(config={"holdout": 0})
    assert snapshot_files() == [run.snapshot.path.rsplit("/", 1)[1]]


def test_a_snapshot_job_whose_follow_up_is_refused_leaves_no_snapshot_file(votes, monkeypatch):
    def refuse(job, snapshot, then):
        assert snapshot_files()  # the file exists while the job's transaction is open
        raise jobs.FollowUpRefused("the follow-up refused")

    monkeypatch.setitem(jobs._SNAPSHOT_FOLLOW_UPS, "refuse", refuse)
    job = jobs.create_snapshot_job(project=default_project(), holdout=0, send=False, then={"name": "refuse"})
    jobs.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "the follow-up refused" in job.errors[0]["detail"]
    assert not DatasetSnapshot.objects.exists()
    assert snapshot_files() == []
