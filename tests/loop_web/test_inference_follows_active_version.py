"""The serving backend follows promotions and rollbacks without a restart."""
from __future__ import annotations

import pytest
import torch

from training import registry
from training.serving import TransformersBackend, generate_for_prompt
from training.kto.demo import demo_prompts
from training.kto.generation import generate_completions
from training.models import ModelVersion

pytestmark = pytest.mark.django_db

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


def test_backend_reloads_when_another_version_is_promoted(active_demo_version, demo_model_dir, perturbed_model_dir):
    expected_base = generate_completions(demo_model_dir, PROMPTS, max_new_tokens=5)
    expected_perturbed = generate_completions(perturbed_model_dir, PROMPTS, max_new_tokens=5)
    assert expected_base != expected_perturbed  # otherwise the test could not tell the models apart

    backend = TransformersBackend()
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_base
    assert backend.loaded_version_id == active_demo_version.pk

    candidate = ModelVersion.objects.create(
        name="perturbed", base_model=demo_model_dir, artifact_path=perturbed_model_dir, parent=active_demo_version
    )
    registry.promote(candidate, reason="test")
    # Same backend object, no restart: the next call serves the newly active version.
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_perturbed
    assert backend.loaded_version_id == candidate.pk

    registry.rollback()
    assert backend.generate(PROMPTS, max_new_tokens=5) == expected_base
    assert backend.loaded_version_id == active_demo_version.pk


def test_generations_are_labelled_with_the_version_that_served_them(active_demo_version, demo_model_dir,
                                                                     perturbed_model_dir):
    backend = TransformersBackend()
    first = generate_for_prompt(PROMPTS[0], max_new_tokens=5, backend=backend)
    assert first.model_version == active_demo_version
    candidate = ModelVersion.objects.create(
        name="perturbed", base_model=demo_model_dir, artifact_path=perturbed_model_dir, parent=active_demo_version
    )
    registry.promote(candidate, reason="test")
    second = generate_for_prompt(PROMPTS[1], max_new_tokens=5, backend=backend)
    assert second.model_version == candidate
    assert second.served_by == candidate
