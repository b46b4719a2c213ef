"""python manage.py add_annotator USERNAME [--password P] [--staff]"""
from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from feedback.selectors import ANNOTATORS_GROUP


class Command(BaseCommand):
    help = "Create (or update) a user who may use the annotation pages; --staff makes an admin."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--password", help="set this password (otherwise the account cannot log in until one is set)")
        parser.add_argument("--staff", action="store_true", help="also give access to the dashboard and the Django admin")

    def handle(self, *args, **options):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=options["username"])
        if options["password"]:
            user.set_password(options["password"])
        elif created:
            user.set_unusable_password()
        if options["staff"]:
            user.is_staff = user.is_superuser = True
        user.save()
        group = Group.objects.filter(name=ANNOTATORS_GROUP).first()
        if group is None:
            raise CommandError(f"group {ANNOTATORS_GROUP!r} is missing: run `python manage.py migrate`")
        user.groups.add(group)
        self.stdout.write(json.dumps({"username": user.username, "created": created, "staff": user.is_staff}))
