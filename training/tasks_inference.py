"""Celery tasks that use the inference backend. They run on the `gpu` queue: the model is loaded
once per worker process and follows promotions (see training.inference)."""
from __future__ import annotations

from celery import shared_task

from training.inference import fill_annotation_queue, top_up_annotation_queue

GPU_QUEUE = "gpu"


@shared_task(name="training.fill_queue", queue=GPU_QUEUE, acks_late=True)
def fill_queue(n: int = 16, temperature: float = 1.0, top_up: bool = False) -> dict:
    """Put `n` fresh samples of the active model into the annotation queue; with top_up, only as
    many as bring the unrated outputs up to `n` (what the demo's periodic refill uses)."""
    if top_up:
        generations = top_up_annotation_queue(n, temperature=temperature)
    else:
        generations = fill_annotation_queue(n, temperature=temperature)
    return {"generations": len(generations), "generation_ids": [g.pk for g in generations]}
