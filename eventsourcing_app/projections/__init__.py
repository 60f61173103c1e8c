"""Projections: read models fed by the event log (inline, async with checkpoints, or live)."""

from .base import ASYNC, INLINE, LIVE, SKIP, STOP, Projection, on
from .bulk import bulk_insert
from .operations import (
    ProjectionStatus,
    pause,
    pending_events,
    projection_statuses,
    rebuild,
    resume,
    retry_dead_letters,
)
from .registry import projection_registry, register
from .runner import ProjectionRunner

__all__ = [
    "ASYNC",
    "INLINE",
    "LIVE",
    "SKIP",
    "STOP",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "bulk_insert",
    "on",
    "pause",
    "pending_events",
    "projection_registry",
    "projection_statuses",
    "rebuild",
    "register",
    "resume",
    "retry_dead_letters",
]
