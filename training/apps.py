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
        from feedback.services.jobs import register_snapshot_follow_up
        from training.runs import RUN_AFTER_SNAPSHOT, start_run_after_snapshot

        # "Retrain now" queues a snapshot job that starts the run: the worker running it must know how.
        register_snapshot_follow_up(RUN_AFTER_SNAPSHOT, start_run_after_snapshot)
