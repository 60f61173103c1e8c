"""The app's models."""

from .commands import CommandPermission, IdempotencyRecord
from .projections import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from .store import Event, Snapshot, Stream

__all__ = [
    "Checkpoint",
    "CheckpointStatus",
    "CommandPermission",
    "Event",
    "IdempotencyRecord",
    "ProjectionDeadLetter",
    "Snapshot",
    "Stream",
]
