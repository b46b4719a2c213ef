"""python manage.py export_kto SNAPSHOT_ID --out FILE.jsonl [--split train|holdout|all]"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from feedback.models import DatasetSnapshot
from feedback.services import export_kto
from feedback.services.export import SPLITS, SnapshotCorrupted
from projects.commands import add_project_argument, project_option


class Command(BaseCommand):
    help = "Write a snapshot as TRL KTO rows {prompt, completion, label}, streaming."

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument("snapshot_id", type=int)
        parser.add_argument("--out", required=True)
        parser.add_argument("--split", choices=SPLITS, default="train")

    def handle(self, *args, **options):
        project = project_option(options)
        # Another project's snapshot is refused exactly like a missing one.
        snapshot = DatasetSnapshot.objects.filter(pk=options["snapshot_id"], project=project).first()
        if snapshot is None:
            raise CommandError(f"snapshot {options['snapshot_id']} does not exist in project {project.name}")
        try:
            n_rows = export_kto(snapshot, options["out"], split=options["split"])
        except SnapshotCorrupted as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            json.dumps(
                {
                    "snapshot_id": snapshot.pk,
                    "out": options["out"],
                    "split": options["split"],
                    "rows": n_rows,
                    "desirable_weight": snapshot.desirable_weight,
                    "undesirable_weight": snapshot.undesirable_weight,
                }
            )
        )
