"""python manage.py snapshot_dataset [--holdout 0.1] [--target-ratio 1.333] [--mode ...] [--manual-weights D U]"""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from feedback.models import Job
from feedback.services import jobs
from projects.commands import add_project_argument, project_option


class Command(BaseCommand):
    help = "Freeze the current votes into an immutable, balanced KTO dataset snapshot."

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument(
            "--holdout", type=float, default=settings.SNAPSHOT_HOLDOUT, help="share of prompts held out"
        )
        parser.add_argument(
            "--target-ratio",
            type=float,
            default=settings.KTO_TARGET_RATIO,
            help="target λ_D·n_D / (λ_U·n_U), paper: 4/3",
        )
        parser.add_argument("--mode", choices=["auto", "downside_first"], default="auto")
        parser.add_argument(
            "--manual-weights",
            type=float,
            nargs=2,
            metavar=("LAMBDA_D", "LAMBDA_U"),
            help="override the automatic weights",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the train/holdout split by prompt")

    def handle(self, *args, **options):
        project = project_option(options)
        # The job a dashboard or API request would queue, run here: same row, same outcome.
        job = jobs.create_snapshot_job(
            project=project,
            holdout=options["holdout"],
            target_ratio=options["target_ratio"],
            mode=options["mode"],
            manual_weights=tuple(options["manual_weights"]) if options["manual_weights"] else None,
            seed=options["seed"],
            send=False,
        )
        job = jobs.run_job(job.pk)
        if job.status != Job.Status.SUCCEEDED:
            raise CommandError(job.errors[0]["detail"])
        self.stdout.write(json.dumps({**job.result, "job_id": job.pk}))
