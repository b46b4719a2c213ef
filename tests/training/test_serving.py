"""The serving backend follows promotions and rollbacks without a restart.

Filling the annotation queue with fresh samples of the active model.
"""

from __future__ import annotations

import pytest
import torch

from feedback.models import Generation
from projects.selectors import default_project
from tests.training.helpers import loadable_artifact
from training import registry
from training.kto.demo import correct_answer, demo_prompts
from training.kto.generation import generate_completions
from training.models import ModelVersion
from training.serving import TransformersBackend, fill_annotation_queue, generate_for_prompt

# --- inference follows active version ----------------------------------------


PROMPTS = demo_prompts(24, seed=11, split="heldout")


@pytest.fixture
def perturbed_model_dir(demo_model_dir, tmp_path):
    """A different model: the demo model's weights with noise, so its answers differ."""
    from training.kto.generation import load_for_generation

    model, tokenizer = load_for_generation(demo_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(tmp_path / "perturbed")
    tokenizer.save_pretrained(tmp_path / "perturbed")
    return str(tmp_path / "perturbed")


@pytest.mark.django_db
def test_backend_reloads_when_another_version_is_promoted(active_demo_version, demo_model_dir, perturbed_model_dir):
    expected_base = generate_completions(demo_model_dir, PROMPTS, max_new_tokens=5)
    expected_perturbed = generate_completions(perturbed_model_dir, PROMPTS, max_new_tokens=5)
    assert expected_base != expected_perturbed  # otherwise the test could not tell the models apart

    backend = TransformersBackend()
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_base
    assert backend.loaded_version_id == active_demo_version.pk

    candidate = ModelVersion.objects.create(
        project=default_project(),
        name="perturbed",
        base_model=demo_model_dir,
        artifact_path=perturbed_model_dir,
        parent=active_demo_version,
    )
    registry.promote(candidate, reason="test")
    # Same backend object, no restart: the next call serves the newly active version.
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_perturbed
    assert backend.loaded_version_id == candidate.pk

    registry.rollback()
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_base
    assert backend.loaded_version_id == active_demo_version.pk


@pytest.mark.django_db
def test_the_backend_reads_its_project_once_and_the_versions_on_every_request(
    active_demo_version, tmp_path, django_assert_num_queries
):
    backend = TransformersBackend()
    assert backend.version == active_demo_version  # the first request reads the project row too
    newer = ModelVersion.objects.create(
        project=default_project(),
        name="newer",
        base_model=active_demo_version.artifact_path,
        artifact_path=loadable_artifact(tmp_path / "newer"),
        parent=active_demo_version,
    )
    registry.promote(newer, reason="test")
    with django_assert_num_queries(1):  # the versions only: the promotion applies at once
        assert backend.version == newer
    registry.rollback()
    with django_assert_num_queries(1):
        assert backend.version == active_demo_version


@pytest.mark.django_db
def test_generations_are_labelled_with_the_version_that_served_them(
    active_demo_version, demo_model_dir, perturbed_model_dir
):
    backend = TransformersBackend()
    first = generate_for_prompt(PROMPTS[0], max_new_tokens=5, backend=backend)
    assert first.model_version == active_demo_version
    candidate = ModelVersion.objects.create(
        project=default_project(),
        name="perturbed",
        base_model=demo_model_dir,
        artifact_path=perturbed_model_dir,
        parent=active_demo_version,
    )
    registry.promote(candidate, reason="test")
    second = generate_for_prompt(PROMPTS[1], max_new_tokens=5, backend=backend)
    assert second.model_version == candidate
    assert second.served_by == candidate


# --- fill queue ----------------------------------------


@pytest.mark.django_db
def test_fill_queue_samples_demo_prompts_from_the_active_version(active_demo_version):
    generations = fill_annotation_queue(8, seed=3)
    assert 1 <= len(generations) <= 8
    stored = Generation.objects.filter(pk__in=[g.pk for g in generations])
    assert stored.count() == len({g.pk for g in generations})
    for generation in stored:
        assert generation.model_version == active_demo_version
        assert generation.source == "fill_queue"
        assert correct_answer(generation.prompt.content) is not None  # a demo question
        assert generation.votes.count() == 0  # waiting in the queue


@pytest.mark.django_db
def test_fill_queue_refuses_a_non_positive_count(active_demo_version):
    with pytest.raises(ValueError, match="at least 1"):
        fill_annotation_queue(0)
    assert Generation.objects.count() == 0
