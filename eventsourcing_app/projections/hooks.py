"""How projections hear of appends: store hooks for inline, live and async projections."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from django.core.cache import cache as django_cache

from ..store import RecordedEvent
from ..store.commit_runs import once_per_commit
from .base import ASYNC, INLINE, LIVE, Projection
from .registry import projection_registry

logger = logging.getLogger("eventsourcing_app.projections")


def _interested(kind: str, event_types: set[str]) -> list[Projection]:
    return projection_registry.interested(kind, frozenset(event_types))


def apply_inline_projections(recorded: list[RecordedEvent]) -> None:
    """APPEND_HOOK: inline projections apply the events in the append's own transaction."""
    for projection in _interested(INLINE, {e.event_type for e in recorded}):
        projection.handle_batch([e for e in recorded if projection.wants(e.event_type, e.category)])


def _wants_inline(event_types: set[str]) -> bool:
    return bool(_interested(INLINE, event_types))


apply_inline_projections.wants = _wants_inline  # type: ignore[attr-defined]


def notify_live_projections(recorded: list[RecordedEvent]) -> None:
    """COMMIT_HOOK: live projections are told of committed events in this process."""
    for projection in _interested(LIVE, {e.event_type for e in recorded}):
        projection.handle_batch([e for e in recorded if projection.wants(e.event_type, e.category)])


notify_live_projections.wants = lambda event_types: bool(_interested(LIVE, event_types))  # type: ignore[attr-defined]


def nudge_async_projections(recorded: list[RecordedEvent]) -> None:
    """COMMIT_HOOK: queue a run of each async projection that wants these events, so lag stays low."""
    for projection in _interested(ASYNC, {e.event_type for e in recorded}):
        enqueue_projection(projection.name)


nudge_async_projections.wants = lambda event_types: bool(_interested(ASYNC, event_types))  # type: ignore[attr-defined]


def enqueue_projection(name: str, *, countdown: float = 0) -> None:
    """Queue `run_projection(name)` unless one is queued and not started yet (it will see our events)."""
    from ..tasks import run_projection

    enqueue_once(pending_key(name), run_projection, name, countdown=countdown)


def enqueue_once(key: str, task: Any, *args: Any, timeout: int = 60, countdown: float = 0) -> None:
    """Queue `task(*args)` unless the cache marks one as queued and not started (the task deletes `key`).

    The mark lives in Django's cache, which every process must share once tasks go through a
    broker; it expires after `timeout` seconds, so a task the broker lost cannot block for longer.
    Called from the COMMIT_HOOKS of one commit, it asks the cache once per key: the run queued
    (or found queued) by the first call starts after the commit, so it sees all of its events.
    """

    def enqueue() -> None:
        if django_cache.add(key, 1, timeout=timeout):
            try:
                task.apply_async(args, countdown=countdown) if countdown else task.delay(*args)
            except Exception:
                django_cache.delete(key)  # a later append (or the beat poll) tries again
                raise

    once_per_commit(key, enqueue)


@cache
def pending_key(name: str) -> str:
    return f"eventsourcing:projection-pending:{name}"
