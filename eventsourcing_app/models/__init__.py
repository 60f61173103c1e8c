"""The app's models."""

from .store import Event, Snapshot, Stream

__all__ = ["Event", "Snapshot", "Stream"]
