from django.db import migrations, models


def copy_snapshot_weights(apps, schema_editor):
    # Runs made before λ was recorded on the run trained with their snapshot's weights (or, in
    # manual mode, with the config's): record what they used.
    TrainingRun = apps.get_model("training", "TrainingRun")
    for run in TrainingRun.objects.select_related("snapshot"):
        config = run.config or {}
        if config.get("lambda_mode") == "manual":
            run.desirable_weight = float(config["desirable_weight"])
            run.undesirable_weight = float(config["undesirable_weight"])
            run.weight_rule = "manual weights from the run's config"
        else:
            run.desirable_weight = run.snapshot.desirable_weight
            run.undesirable_weight = run.snapshot.undesirable_weight
            run.weight_rule = f"snapshot {run.snapshot_id}: {run.snapshot.weight_rule}"
        run.save(update_fields=["desirable_weight", "undesirable_weight", "weight_rule"])


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0004_annotators_group"),
        ("training", "0003_policy_defaults_from_settings"),
    ]

    operations = [
        migrations.AddField(
            model_name="trainingrun",
            name="desirable_weight",
            field=models.FloatField(default=1.0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="trainingrun",
            name="undesirable_weight",
            field=models.FloatField(default=1.0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="trainingrun",
            name="weight_rule",
            field=models.TextField(blank=True),
        ),
        migrations.RunPython(copy_snapshot_weights, migrations.RunPython.noop),
    ]
