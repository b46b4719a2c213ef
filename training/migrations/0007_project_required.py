# The NOT NULL step apart from the data step: PostgreSQL refuses to alter a table with pending trigger events.
from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):
    dependencies = [("training", "0006_move_into_default_project")]

    operations = [
        migrations.AlterField(
            model_name="modelversion",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="model_versions", to="projects.project"
            ),
        ),
        migrations.AlterField(
            model_name="trainingrun",
            name="project",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="training_runs", to="projects.project"
            ),
        ),
        migrations.AlterField(
            model_name="trainingpolicy",
            name="project",
            field=models.OneToOneField(
                on_delete=django.db.models.deletion.CASCADE, related_name="training_policy", to="projects.project"
            ),
        ),
    ]
