from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations

ANNOTATORS_GROUP = "annotators"
PROJECT_ADMINS_GROUP = "project admins"
ANNOTATOR_PERMISSIONS = ["feedback.add_vote"]
PROJECT_ADMIN_PERMISSIONS = [
    "feedback.add_vote",
    "feedback.view_datasetsnapshot",
    "feedback.add_datasetsnapshot",
    "feedback.add_importbatch",
    "training.view_trainingrun",
    "training.add_trainingrun",
    "training.change_trainingrun",
    "training.view_modelversion",
    "training.change_modelversion",
    "projects.manage_api_clients",
    "projects.change_membership",
]


def create_role_groups(apps, schema_editor):
    # Permissions are normally created after `migrate`; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in ((ANNOTATORS_GROUP, ANNOTATOR_PERMISSIONS), (PROJECT_ADMINS_GROUP, PROJECT_ADMIN_PERMISSIONS)):
        group, _ = Group.objects.get_or_create(name=name)
        for perm in perms:
            app_label, codename = perm.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def give_existing_users_their_roles(apps, schema_editor):
    # Before projects, membership of the global "annotators" group let a user rate and is_staff
    # gave everything: both keep what they had, in the default project. Staff who are not
    # superusers become that project's admins (is_staff alone no longer grants anything).
    Project = apps.get_model("projects", "Project")
    Membership = apps.get_model("projects", "Membership")
    User = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    project = Project.objects.filter(name=settings.PROSPECT_DEFAULT_PROJECT).first()
    if project is None:
        return
    for user in User.objects.filter(is_staff=True):
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": "admin"})
    for user in User.objects.filter(groups__name=ANNOTATORS_GROUP).distinct():
        Membership.objects.get_or_create(project=project, user=user, defaults={"role": "annotator"})


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0002_default_project"),
        ("feedback", "0008_project_required"),
        ("training", "0007_project_required"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_role_groups, migrations.RunPython.noop),
        migrations.RunPython(give_existing_users_their_roles, migrations.RunPython.noop),
    ]
