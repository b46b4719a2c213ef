"""Filling the annotation queue with fresh samples of the active model."""
from __future__ import annotations

import pytest

from feedback.models import Generation
from training.serving import fill_annotation_queue
from training.kto.demo import correct_answer

pytestmark = pytest.mark.django_db


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


def test_fill_queue_refuses_a_non_positive_count(active_demo_version):
    with pytest.raises(ValueError, match="at least 1"):
        fill_annotation_queue(0)
    assert Generation.objects.count() == 0
