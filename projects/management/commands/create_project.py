"""python manage.py create_project NAME [--base-model PATH] → {"project", "slug", "id"}"""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from projects.services import create_project


class Command(BaseCommand):
    help = "Create a project (one product team's prompts, votes, runs, models and keys)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument(
            "--base-model", default="", help="the model its first version starts from (default: PROSPECT_BASE_MODEL)"
        )

    def handle(self, *args, **options):
        try:
            project = create_project(options["name"], base_model=options["base_model"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(json.dumps({"project": project.name, "slug": project.slug, "id": project.pk}))
