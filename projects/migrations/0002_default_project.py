from django.conf import settings
from django.db import migrations
from django.utils.text import slugify


def create_default_project(apps, schema_editor):
    # A fresh installation (and every existing one, whose rows move into it) has one project.
    Project = apps.get_model("projects", "Project")
    name = settings.PROSPECT_DEFAULT_PROJECT
    Project.objects.get_or_create(name=name, defaults={"slug": slugify(name) or "default"})


class Migration(migrations.Migration):
    dependencies = [("projects", "0001_initial")]

    operations = [migrations.RunPython(create_default_project, migrations.RunPython.noop)]
