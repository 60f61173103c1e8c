"""Aggregates, their repository and snapshots."""

from .base import Aggregate, applies
from .repository import Repository
from .snapshots import SnapshotStore

__all__ = ["Aggregate", "Repository", "SnapshotStore", "applies"]
