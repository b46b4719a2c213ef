from django.conf import settings
from django.db import migrations


def move_into_default_project(apps, schema_editor):
    # Rows made before projects existed belong to the installation's default project.
    Project = apps.get_model("projects", "Project")
    project = Project.objects.get(name=settings.PROSPECT_DEFAULT_PROJECT)
    for model_name in ["ModelVersion", "TrainingRun", "TrainingPolicy"]:
        apps.get_model("training", model_name).objects.filter(project__isnull=True).update(project=project)


class Migration(migrations.Migration):
    dependencies = [("training", "0005_projects"), ("projects", "0002_default_project")]

    operations = [
        migrations.RunPython(move_into_default_project, migrations.RunPython.noop),
    ]
