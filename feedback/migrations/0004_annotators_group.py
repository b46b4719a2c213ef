from django.db import migrations

ANNOTATORS_GROUP = "annotators"


def create_annotators_group(apps, schema_editor):
    # Membership of this group is what lets a non-staff user reach the annotation pages.
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name=ANNOTATORS_GROUP)


def remove_annotators_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name=ANNOTATORS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0003_queue_claims_import_batches"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(create_annotators_group, remove_annotators_group)]
