"""Fixtures of the training tests: users in their roles, the demo model as the active version,
votes on demo questions, a tiny training policy. (Workers, Redis and the shared database are
fixtures of the whole suite: tests/conftest.py.)"""

from __future__ import annotations

import pytest

from tests.training.helpers import TINY_TRAINING, cast_demo_votes


# --- users and data ------------------------------------------------------------------------------
@pytest.fixture
def password() -> str:
    return "correct horse battery staple"


@pytest.fixture
def admin_user(django_user_model, password):
    return django_user_model.objects.create_user("boss", password=password, is_staff=True, is_superuser=True)


@pytest.fixture
def annotator_user(django_user_model, password):
    from django.contrib.auth.models import Group

    user = django_user_model.objects.create_user("rater", password=password)
    user.groups.add(Group.objects.get_or_create(name="annotators")[0])
    return user


@pytest.fixture
def active_demo_version(demo_model_dir):
    """The demo model as the first (active) version."""
    from training import registry

    return registry.ensure_base_version(demo_model_dir)


@pytest.fixture
def voted_demo_data():
    """A small two-class dataset of real votes on demo questions: right and wrong sums."""
    return cast_demo_votes(12, seed=5, voter="tester")


@pytest.fixture
def demo_loop(committed_db, data_dir, active_demo_version, demo_model_dir):
    """The demo model as the active version, a policy with a tiny training config, 20 prompts' votes."""
    from training.policy import get_policy

    policy = get_policy()
    for name, value in TINY_TRAINING.items():
        setattr(policy, name, value)
    policy.base_model = demo_model_dir
    policy.min_new_votes, policy.cooldown_seconds = 10_000, 0  # tests start runs themselves unless they lower it
    policy.save()
    cast_demo_votes(20)
    return active_demo_version


@pytest.fixture(scope="session")
def demo_variants(demo_model_dir, tmp_path_factory) -> dict[str, str]:
    """{"better": dir, "worse": dir}: real models better and worse than the demo model (see helpers)."""
    from tests.training.helpers import build_demo_variants

    return build_demo_variants(demo_model_dir, tmp_path_factory.mktemp("demo-variants"))


@pytest.fixture
def gated_candidate(db, data_dir, active_demo_version):
    """make(artifact_dir, **config) -> a pending candidate produced by a (stand-in) succeeded run whose
    holdout file holds real KTO rows on held-out demo questions; config is the run's recorded config."""
    import json

    from feedback.models import DatasetSnapshot
    from tests.training.helpers import demo_holdout_rows
    from training.models import ModelVersion, TrainingRun
    from training.policy import resolve_training_config

    def make(artifact_dir: str, *, holdout_prompts: int = 40, **config) -> ModelVersion:
        snapshot = DatasetSnapshot.objects.create(
            project=active_demo_version.project, path="unused", sha256="0" * 64, n_holdout=2 * holdout_prompts
        )
        run = TrainingRun.objects.create(
            project=active_demo_version.project,
            snapshot=snapshot,
            config=resolve_training_config({"max_length": 32, "per_device_train_batch_size": 8, **config}),
            desirable_weight=1.0,
            undesirable_weight=1.0,
            status=TrainingRun.Status.SUCCEEDED,
        )
        run_dir = data_dir / f"run-{run.pk}"
        (run_dir / "data").mkdir(parents=True)
        rows = demo_holdout_rows(holdout_prompts)
        (run_dir / "data" / "holdout.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        TrainingRun.objects.filter(pk=run.pk).update(artifact_dir=str(run_dir))
        run.refresh_from_db()
        return ModelVersion.objects.create(
            project=active_demo_version.project,
            name=f"run-{run.pk}",
            base_model=active_demo_version.artifact_path,
            artifact_path=artifact_dir,
            parent=active_demo_version,
            created_by_run=run,
            status_reason="awaiting the evaluation gate",
            evaluation_state=ModelVersion.EvaluationState.PENDING,
        )

    return make
