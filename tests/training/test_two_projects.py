"""Two projects side by side through the whole loop, with a real Celery worker: each team's votes
(sent with its own API key) → its snapshot → its run → the gate → its promotion → generate with its
key from its own new version. Nothing of one reaches the other: rows, files, versions, answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from feedback.models import DatasetSnapshot, Generation, Vote
from projects.selectors import default_project
from projects.services import create_api_key, create_project
from tests.helpers import wait_for
from tests.training.helpers import TINY_TRAINING
from training import registry
from training.models import ModelVersion, TrainingRun
from training.policy import get_policy
from training.runs import start_run
from training.selectors import active_version

pytestmark = pytest.mark.slow

ALL_SCOPES = "generations:write,votes:write,generate,import,read"


def key_client(project) -> APIClient:
    client = APIClient()
    _, key = create_api_key(project, scopes=ALL_SCOPES)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {key}")
    return client


def send_votes(api: APIClient, prompts: list[str], right_is_desirable: bool) -> set[str]:
    """For each prompt a right and a wrong sum, each with one end user's thumbs, through the API."""
    from training.kto.demo import correct_answer

    for prompt in prompts:
        right = correct_answer(prompt)
        for completion, desirable in ((right, right_is_desirable), (str(int(right) + 1), not right_is_desirable)):
            generation = api.post("/api/v1/generations/", {"prompt": prompt, "completion": completion}, format="json")
            assert generation.status_code == 201, generation.content
            vote = api.post(
                "/api/v1/votes/",
                {"generation_id": generation.json()["id"], "desirable": desirable, "external_user_id": "end-user"},
                format="json",
            )
            assert vote.status_code == 201, vote.content
    return set(prompts)


def snapshot_rows(snapshot: DatasetSnapshot) -> list[dict]:
    return [json.loads(line) for line in Path(snapshot.path).read_text().splitlines() if line.strip()]


def test_two_projects_turn_the_loop_without_touching_each_other(
    committed_db, data_dir, demo_model_dir, start_worker, loop_redis
):
    from training.kto.demo import correct_answer, demo_prompts

    alpha, beta = default_project(), create_project("beta", base_model=demo_model_dir)
    for project in (alpha, beta):
        registry.ensure_base_version(demo_model_dir, project=project)
        policy = get_policy(project)
        for name, value in TINY_TRAINING.items():
            setattr(policy, name, value)
        # Promote whatever the gate measures: the gate's verdicts have their own tests; here the
        # wiring of two projects through one worker is under test. The demo judge alone (no
        # holdout, so no `evaluate` subprocesses): the gate still runs per project, on its versions.
        policy.base_model, policy.holdout, policy.judges, policy.judge_prompts = demo_model_dir, 0.0, "demo", 8
        policy.promote_margin, policy.min_new_votes = -1.0, 10_000
        policy.save()
    bases = {project.pk: active_version(project) for project in (alpha, beta)}

    api_alpha, api_beta = key_client(alpha), key_client(beta)
    prompts = list(demo_prompts(16, seed=11, split="train"))
    # Different prompts and opposite tastes: a leak of either would show in the other's data.
    alpha_prompts = send_votes(api_alpha, prompts[:8], right_is_desirable=True)
    beta_prompts = send_votes(api_beta, prompts[8:], right_is_desirable=False)

    worker = start_worker("default,gpu")
    runs = {project.pk: start_run(project=project) for project in (alpha, beta)}

    def promoted() -> bool:
        return all(active_version(project) != bases[project.pk] for project in (alpha, beta))

    wait_for(
        promoted,
        600,
        "both projects' gates to promote their new versions",
        on_timeout=lambda: worker.log()[-6000:] + repr(list(TrainingRun.objects.values("pk", "status", "error"))),
    )

    for project, own_prompts, other_prompts in (
        (alpha, alpha_prompts, beta_prompts),
        (beta, beta_prompts, alpha_prompts),
    ):
        run = TrainingRun.objects.get(pk=runs[project.pk].pk)
        new = active_version(project)
        assert run.status == TrainingRun.Status.SUCCEEDED and run.project == project
        # Its snapshot holds exactly its own votes: its prompts, none of the other's.
        assert run.snapshot.project == project
        rows = snapshot_rows(run.snapshot)
        assert {row["prompt"] for row in rows} == own_prompts and not {row["prompt"] for row in rows} & other_prompts
        # ... with its own team's taste (alpha: right sums are desirable; beta: the opposite).
        likes_right = project == alpha
        assert all(
            row["label"] == ((row["completion"] == correct_answer(row["prompt"])) == likes_right) for row in rows
        )
        assert run.snapshot.n_votes == Vote.objects.filter(generation__project=project).count() == 16
        # Its new version came from its run, from its own base, and only it was promoted in it.
        assert (new.project, new.created_by_run, new.parent) == (project, run, bases[project.pk])
        assert ModelVersion.objects.filter(project=project, status=ModelVersion.Status.ACTIVE).count() == 1
        assert bases[project.pk].project == project
    assert active_version(alpha).artifact_path != active_version(beta).artifact_path

    # Generate with each key: the key's project's new version answers, and the row is that project's.
    for project, api in ((alpha, api_alpha), (beta, api_beta)):
        response = api.post("/api/v1/generate/", {"prompt": "What is 4+5?", "max_new_tokens": 4}, format="json")
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["model_version_id"] == active_version(project).pk
        assert Generation.objects.get(pk=body["generation_id"]).project == project
        # The other project's key cannot vote on it: 404, as if it did not exist.
        other = api_beta if api is api_alpha else api_alpha
        assert (
            other.post(
                "/api/v1/votes/", {"generation_id": body["generation_id"], "desirable": True}, format="json"
            ).status_code
            == 404
        )

    # The worker fills one project's queue from that project's active version only.
    from training.tasks import fill_queue

    fill_queue.delay(n=2, project_id=beta.pk)
    wait_for(
        lambda: Generation.objects.filter(project=beta, source="fill_queue").exists(),
        180,
        "the worker to fill beta's queue",
        on_timeout=worker.log,
    )
    assert set(Generation.objects.filter(source="fill_queue").values_list("project_id", "model_version_id")) == {
        (beta.pk, active_version(beta).pk)
    }
    assert Vote.objects.filter(generation__project=alpha).count() == 16  # beta's loop added nothing to alpha
