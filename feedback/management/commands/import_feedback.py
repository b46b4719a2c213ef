"""python manage.py import_feedback FILE [--format auto|kto|paired|hh|scored] [--threshold T] [--on-invalid fail|skip]"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from feedback.importers import FORMAT_CHOICES, ON_INVALID_CHOICES
from feedback.models import Job
from feedback.services import jobs
from projects.commands import add_project_argument, project_option


class Command(BaseCommand):
    help = "Import a JSONL feedback file (all or nothing, or skipping bad lines) and print a one-line JSON summary."

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument("file")
        # Not argparse choices: an unknown format must get the same clear message as from the API.
        parser.add_argument("--format", default="auto", help=f"one of {', '.join(FORMAT_CHOICES)} (default auto)")
        parser.add_argument(
            "--threshold", type=float, default=None, help="scored format: the score that separates good from bad"
        )
        parser.add_argument(
            "--weight-by-distance", action="store_true", help="scored format: weight each vote by |score - threshold|"
        )

        parser.add_argument(
            "--one-y-per-x", action="store_true", help="paired/hh: keep only one of chosen/rejected, at random (seeded)"
        )
        parser.add_argument(
            "--on-invalid",
            default="fail",
            choices=ON_INVALID_CHOICES,
            help="fail: the first bad line rejects the file, nothing is imported (default); skip: import every "
            "valid line (or side of a pair) and list each skipped one with its reason in a report file",
        )

    def handle(self, *args, **options):
        project = project_option(options)
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        # The same job as an upload's, run here rather than by a worker: its row records the
        # outcome for the dashboard, and the output stays the one JSON line it always was.
        job = jobs.create_import_job(
            project=project,
            upload_path=str(path.resolve()),
            filename=path.name,
            upload_bytes=path.stat().st_size,
            fmt=options["format"],
            threshold=options["threshold"],
            weight_by_distance=options["weight_by_distance"],
            one_y_per_x=options["one_y_per_x"],
            on_invalid=options["on_invalid"],
            send=False,
        )
        job = jobs.run_job(job.pk)
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(f"{path}: {job.errors[0]['detail']}")
        self.stdout.write(json.dumps({**job.result, "file": str(path), "job_id": job.pk}))
