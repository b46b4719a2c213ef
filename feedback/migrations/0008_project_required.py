# The NOT NULL step apart from the data step: PostgreSQL refuses to alter a table with pending trigger events.
from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    dependencies = [("feedback", "0007_move_into_default_project")]

    operations = [
        migrations.AlterField(
            model_name="prompt",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="prompts", to="projects.project"
            ),
        ),
        migrations.AlterField(
            model_name="generation",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="generations", to="projects.project"
            ),
        ),
        migrations.AlterField(
            model_name="importbatch",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="import_batches", to="projects.project"
            ),
        ),
        migrations.AlterField(
            model_name="datasetsnapshot",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="snapshots", to="projects.project"
            ),
        ),
    ]
