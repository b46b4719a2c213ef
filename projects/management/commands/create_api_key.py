"""python manage.py create_api_key --project NAME --scopes S1,S2 [--expires-days N] [--rate R] [--name TEXT]
→ {"project", "key", "scopes", ...}; the key is shown only here (it is stored hashed)."""

from __future__ import annotations

import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from projects.commands import project_option
from projects.models import SCOPES
from projects.services import create_api_key


class Command(BaseCommand):
    help = "Create an API key for a project's product app; prints it once."

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project name or slug")
        parser.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
        parser.add_argument("--expires-days", type=int, default=None, help="the key stops working after N days")
        parser.add_argument("--rate", default="", help="request limit of this key, e.g. 100/s or 6000/min")
        parser.add_argument("--name", default="", help="what the key is for (shown on the Keys page)")

    def handle(self, *args, **options):
        project = project_option(options)
        try:
            client, key = create_api_key(
                project,
                scopes=options["scopes"],
                name=options["name"],
                expires_days=options["expires_days"],
                rate=options["rate"],
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{field}: {', '.join(msgs)}" for field, msgs in exc.message_dict.items())
            ) from None
        self.stdout.write(
            json.dumps(
                {
                    "project": project.name,
                    "key": key,
                    "scopes": client.scopes,
                    "prefix": client.prefix,
                    "expires": client.expiry_date.isoformat() if client.expiry_date else None,
                }
            )
        )
