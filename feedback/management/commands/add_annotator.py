"""python manage.py add_annotator USERNAME [--password P] [--project NAME] [--staff]"""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from projects.commands import add_project_argument, project_option
from projects.models import Membership
from projects.services import set_membership


class Command(BaseCommand):
    help = (
        "Create (or update) a user who rates in a project; --staff makes them the project's admin "
        "(never an installation superuser: use createsuperuser for that)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--password", help="set this password (otherwise the account cannot log in until one is set)"
        )
        parser.add_argument(
            "--staff",
            action="store_true",
            help="project admin: dashboard, snapshots, runs, models, keys, members (and the Django admin)",
        )
        add_project_argument(parser)

    def handle(self, *args, **options):
        project = project_option(options)
        User = get_user_model()
        user, created = User.objects.get_or_create(username=options["username"])
        if options["password"]:
            user.set_password(options["password"])
        elif created:
            user.set_unusable_password()
        if options["staff"]:
            user.is_staff = True  # the Django admin's door only; what they may do is their project role
        user.save()
        role = Membership.Role.ADMIN if options["staff"] else Membership.Role.ANNOTATOR
        existing = Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()
        if existing != Membership.Role.ADMIN:  # never demote an admin by adding them as an annotator
            set_membership(project, user, role)
        self.stdout.write(
            json.dumps(
                {
                    "username": user.username,
                    "created": created,
                    "staff": user.is_staff,
                    "project": project.name,
                    "role": existing if existing == "admin" else role,
                }
            )
        )
