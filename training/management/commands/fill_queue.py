"""`python manage.py fill_queue [N] [--async]`: put fresh samples of the active model into the queue."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from projects.commands import add_project_argument, project_option
from training import dispatch
from training.serving import NoActiveModelVersion, fill_annotation_queue


class Command(BaseCommand):
    help = "Sample N fresh outputs of the active model (demo prompts) into the annotation queue."

    def add_arguments(self, parser):
        add_project_argument(parser)
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
        project = project_option(options)
        if use_worker:
            dispatch.send_fill_queue(n, temperature=temperature, project_id=project.pk)
            self.stdout.write(json.dumps({"queued_task": dispatch.FILL_QUEUE, "n": n}))
            return
        try:
            generations = fill_annotation_queue(n, temperature=temperature, project=project)
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
