"""Celery tasks of the feedback app: thin entry points that load a job by id and run it.

The web (and the dispatcher) send them by name (feedback.services.jobs.RUN_JOB_TASK) to the
`default` queue. Late ack: a worker that dies mid-job leaves the message to be delivered again,
and the job's status guard (feedback.services.jobs.claim_job) decides whether it runs again.
"""

from __future__ import annotations

from celery import shared_task

from feedback.services import jobs


@shared_task(name=jobs.RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: int) -> str | None:
    """Run an import or snapshot job that is still queued; a job already run is left alone."""
    job = jobs.run_job(job_id)
    return job.status if job is not None else None
