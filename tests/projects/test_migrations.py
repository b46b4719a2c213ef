"""An installation from before projects: its rows all move into the default project on `migrate`,
the per-project constraints hold, and the role groups exist."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE_PROJECTS = [
    ("feedback", "0005_import_batches_plural"),
    ("training", "0004_run_class_weights"),
    ("projects", None),
]

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state([target for target in targets if target[1] is not None]).apps


def test_existing_rows_move_into_the_default_project():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = migrate(BEFORE_PROJECTS)
    Prompt, Generation, Vote = (old.get_model("feedback", name) for name in ("Prompt", "Generation", "Vote"))
    DatasetSnapshot, ImportBatch = (
        old.get_model("feedback", "DatasetSnapshot"),
        old.get_model("feedback", "ImportBatch"),
    )
    ModelVersion, TrainingRun = old.get_model("training", "ModelVersion"), old.get_model("training", "TrainingRun")
    TrainingPolicy = old.get_model("training", "TrainingPolicy")

    prompt = Prompt.objects.create(content="What is 2+2?", content_sha256="a" * 64)
    generation = Generation.objects.create(
        prompt=prompt, completion="4", completion_sha256="b" * 64, external_id="app-1"
    )
    Vote.objects.create(generation=generation, external_user_id="user-9", desirable=True)
    snapshot = DatasetSnapshot.objects.create(path="/s.jsonl", sha256="c" * 64)
    ImportBatch.objects.create(filename="f.jsonl", sha256="d" * 64, format="kto")
    version = ModelVersion.objects.create(name="base", base_model="/m", artifact_path="/m", status="active")
    TrainingRun.objects.create(snapshot=snapshot, base_version=version, desirable_weight=1.0, undesirable_weight=1.0)
    TrainingPolicy.objects.create(pk=1)

    new = migrate(latest)
    Project = new.get_model("projects", "Project")
    demo = Project.objects.get()
    assert demo.name == "demo"
    for app, name in (
        ("feedback", "Prompt"),
        ("feedback", "Generation"),
        ("feedback", "DatasetSnapshot"),
        ("feedback", "ImportBatch"),
        ("training", "ModelVersion"),
        ("training", "TrainingRun"),
        ("training", "TrainingPolicy"),
    ):
        rows = new.get_model(app, name).objects.all()
        assert rows.exists() and set(rows.values_list("project_id", flat=True)) == {demo.pk}, name
    assert new.get_model("feedback", "Generation").objects.get().external_id == "app-1"
    assert new.get_model("feedback", "Vote").objects.get().external_user_id == "user-9"
    groups = new.get_model("auth", "Group").objects.values_list("name", flat=True)
    assert set(groups) >= {"annotators", "project admins"}
