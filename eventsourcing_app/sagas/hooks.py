"""How sagas hear of appends: a commit hook queues a run of each saga that handles the new events."""

from __future__ import annotations

from functools import cache

from ..projections.hooks import enqueue_once
from ..store import RecordedEvent
from .registry import saga_registry


def nudge_sagas(recorded: list[RecordedEvent]) -> None:
    """COMMIT_HOOK: queue `run_saga` for each saga that handles these events, so a saga moves on at once."""
    for name in saga_registry.interested({e.event_type for e in recorded}):
        enqueue_saga(name)


nudge_sagas.wants = lambda event_types: bool(saga_registry.interested(event_types))  # type: ignore[attr-defined]


def enqueue_saga(name: str, *, countdown: float = 0) -> None:
    """Queue `run_saga(name)` unless one is queued and not started yet (it will see our events)."""
    from ..tasks import run_saga

    enqueue_once(pending_key(name), run_saga, name, countdown=countdown)


@cache
def pending_key(name: str) -> str:
    return f"eventsourcing:saga-pending:{name}"
