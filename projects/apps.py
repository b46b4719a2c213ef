from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "projects"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from projects.services import ensure_installation_defaults

        # Every app sends post_migrate in turn; the defaults need every app's permissions, which
        # exist once the last app's signal has been handled (see ensure_installation_defaults).
        post_migrate.connect(ensure_installation_defaults, dispatch_uid="prospect-installation-defaults")
