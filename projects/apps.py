from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "projects"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_migrate, post_save

        from projects.authentication import forget_changed_key
        from projects.models import ApiClient
        from projects.services import ensure_installation_defaults

        # A key changed or deleted in this process is verified against the database again at once.
        post_save.connect(forget_changed_key, sender=ApiClient, dispatch_uid="prospect-forget-saved-key")
        post_delete.connect(forget_changed_key, sender=ApiClient, dispatch_uid="prospect-forget-deleted-key")

        # Every app sends post_migrate in turn; the defaults need every app's permissions, which
        # exist once the last app's signal has been handled (see ensure_installation_defaults).
        post_migrate.connect(ensure_installation_defaults, dispatch_uid="prospect-installation-defaults")
