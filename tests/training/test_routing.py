"""version_for_request: the active version, except for the share of end users an open canary takes;
one end user always lands on the same side."""

from __future__ import annotations

import pytest

from tests.training.helpers import loadable_artifact
from training.models import ModelVersion
from training.routing import NoActiveModelVersion, version_for_request


@pytest.fixture
def versions(db, tmp_path):
    from projects.selectors import default_project
    from training import registry

    project = default_project()
    active = registry.ensure_base_version(loadable_artifact(tmp_path / "active"))
    candidate = ModelVersion.objects.create(
        project=project, name="candidate", base_model="m", artifact_path=loadable_artifact(tmp_path / "candidate")
    )
    return project, active, candidate


def test_without_a_canary_the_active_version_answers_everyone(versions):
    project, active, candidate = versions
    assert {version_for_request(project, routing_key=f"u{i}").pk for i in range(50)} == {active.pk}
    assert version_for_request(project).pk == active.pk


def test_a_canary_takes_its_share_of_end_users_each_always_on_one_side(versions):
    project, active, candidate = versions
    ModelVersion.objects.filter(pk=candidate.pk).update(canary_share=0.2)
    users = [f"user-{i}" for i in range(1000)]
    first = {user: version_for_request(project, routing_key=user).pk for user in users}
    assert {user: version_for_request(project, routing_key=user).pk for user in users} == first  # sticky
    share = sum(pk == candidate.pk for pk in first.values()) / len(users)
    assert 0.16 < share < 0.24
    # Requests without a routing key are spread too (at random).
    assert {version_for_request(project).pk for _ in range(100)} == {active.pk, candidate.pk}

    # The canary ends (share 0) or the candidate is no longer a candidate: everyone on the active version.
    ModelVersion.objects.filter(pk=candidate.pk).update(status=ModelVersion.Status.REJECTED)
    assert {version_for_request(project, routing_key=user).pk for user in users[:300]} == {active.pk}


def test_nothing_active_is_an_error_even_with_a_canary(versions):
    project, active, candidate = versions
    ModelVersion.objects.filter(pk=active.pk).update(status=ModelVersion.Status.RETIRED)
    ModelVersion.objects.filter(pk=candidate.pk).update(canary_share=0.5)
    with pytest.raises(NoActiveModelVersion):
        version_for_request(project, routing_key="u1")
