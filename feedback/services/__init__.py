"""Every write of the feedback app goes through these functions (views and commands stay thin)."""

from feedback.services.export import export_kto
from feedback.services.generations import (
    GenerationConflict,
    create_generation,
    create_generations,
)
from feedback.services.imports import import_feedback
from feedback.services.queue import claim_next_generation, record_annotator_vote, release_claim, undo_last_vote
from feedback.services.snapshots import SnapshotRefused, create_snapshot
from feedback.services.votes import GenerationNotFound, record_vote

__all__ = [
    "GenerationConflict",
    "GenerationNotFound",
    "SnapshotRefused",
    "claim_next_generation",
    "create_generation",
    "create_generations",
    "create_snapshot",
    "export_kto",
    "import_feedback",
    "record_annotator_vote",
    "record_vote",
    "release_claim",
    "undo_last_vote",
]
