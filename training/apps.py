from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self) -> None:
        # The laptop's SQLite database, the snapshots and the run artifacts live in DATA_DIR: it
        # exists once Django has started (settings themselves touch no file system).
        Path(settings.DATA_DIR).mkdir(parents=True, exist_ok=True)
