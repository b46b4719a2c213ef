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
