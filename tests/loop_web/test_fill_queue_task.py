"""The fill_queue task runs on a real worker that consumes only the gpu queue."""
from __future__ import annotations

import time

import pytest

from feedback.models import Generation
from training.tasks import fill_queue

pytestmark = pytest.mark.slow

TASK_TIMEOUT_S = 120


def test_fill_queue_task_is_routed_to_the_gpu_worker_and_fills_the_queue(start_celery_worker, active_demo_version):
    worker = start_celery_worker("gpu")  # a task routed anywhere else would never run
    fill_queue.delay(n=4)
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while not Generation.objects.filter(source="fill_queue").exists():
        assert time.monotonic() < deadline, worker.log_path.read_text()[-4000:]
        time.sleep(0.3)
    generations = Generation.objects.filter(source="fill_queue")
    assert all(generation.model_version_id == active_demo_version.pk for generation in generations)
    assert "training.fill_queue" in worker.log_path.read_text()
