"""The app's models."""

from .commands import CommandPermission, IdempotencyRecord
from .store import Event, Snapshot, Stream

__all__ = ["CommandPermission", "Event", "IdempotencyRecord", "Snapshot", "Stream"]
