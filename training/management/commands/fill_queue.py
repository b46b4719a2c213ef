"""`python manage.py fill_queue [N] [--async]`: put fresh samples of the active model into the queue."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from training import dispatch
from training.serving import NoActiveModelVersion, fill_annotation_queue


class Command(BaseCommand):
    help = "Sample N fresh outputs of the active model (demo prompts) into the annotation queue."

    def add_arguments(self, parser):
        parser.add_argument("n", nargs="?", type=int, default=16)
        parser.add_argument("--temperature", type=float, default=1.0)
        parser.add_argument(
            "--async",
            dest="use_worker",
            action="store_true",
            help="Send the fill_queue task to the gpu queue instead of generating here.",
        )

    def handle(self, *args, n: int, temperature: float, use_worker: bool, **options):
        if n < 1:
            raise CommandError("N must be at least 1")
        if use_worker:
            dispatch.send_fill_queue(n, temperature=temperature)
            self.stdout.write(json.dumps({"queued_task": dispatch.FILL_QUEUE, "n": n}))
            return
        try:
            generations = fill_annotation_queue(n, temperature=temperature)
        except NoActiveModelVersion as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            json.dumps(
                {
                    "generations": len(generations),
                    "model_version": generations[0].served_by.name if generations else None,
                }
            )
        )
