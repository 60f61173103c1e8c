"""Projections: read models kept up to date from the event log.

A projection names the events it wants (exact types, glob patterns such as
"Order*", and/or stream categories) and has a handler per event type::

    @register
    class OrderSummaryProjection(Projection):
        name = "order_summary"

        @on("OrderPlaced")
        def placed(self, event: RecordedEvent) -> None:
            OrderSummary.objects.create(order_id=event.data.order_id, status="placed")

        def clear(self) -> None:
            OrderSummary.objects.all().delete()

Kinds: INLINE runs in the append's transaction; ASYNC runs in workers from a
checkpoint (the default); LIVE is told of events in-process once they commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any, ClassVar

from ..store import RecordedEvent

INLINE, ASYNC, LIVE = "inline", "async", "live"
STOP, SKIP = "stop", "skip"

_Handler = Callable[[Any, RecordedEvent], None]


def on(*event_types: str) -> Callable[[_Handler], _Handler]:
    """Mark a method as the handler of these event types (exact names)."""

    def mark(method: _Handler) -> _Handler:
        method._handles_events = event_types  # type: ignore[attr-defined]
        return method

    return mark


def in_categories(category: str | None, categories: Sequence[str]) -> bool:
    """Whether a stream category is among `categories` (exact names or globs, as the store's log reads
    take them); every category is when there are none, and so is an unknown (None) one."""
    return category is None or not categories or any(fnmatchcase(category, pattern) for pattern in categories)


class Projection:
    """Base class of projections; see the module docstring.

    Attributes:
        name: unique, snake_case (default: the class name, snake_cased, without "Projection").
        kind: INLINE, ASYNC or LIVE.
        event_types: types or glob patterns it wants (default: those of its @on handlers).
        categories: stream categories or glob patterns it wants (default: all).
        on_error: what a poison event does to an async projection: STOP (it fails,
            visibly) or SKIP (the event goes to a dead letter and the projection goes on).
        batch_size: events per transaction (default PROJECTION_BATCH_SIZE).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = ASYNC
    event_types: ClassVar[Sequence[str]] = ()
    categories: ClassVar[Sequence[str]] = ()
    on_error: ClassVar[str] = STOP
    batch_size: ClassVar[int | None] = None
    _handlers: ClassVar[dict[str, _Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            base = cls.__name__.removesuffix("Projection") or cls.__name__
            # "OrderSummary" -> "order_summary", "HTTPStats" -> "http_stats" (an acronym is one word).
            cls.name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", base).lower()
        handlers = dict(cls._handlers)
        for attribute in cls.__dict__.values():
            for event_type in getattr(attribute, "_handles_events", ()):
                handlers[event_type] = attribute
        cls._handlers = handlers
        if not cls.__dict__.get("event_types") and handlers:
            cls.event_types = tuple(sorted(handlers))
        if cls.kind not in (INLINE, ASYNC, LIVE):
            raise ValueError(f"{cls.__name__}.kind must be inline, async or live, not {cls.kind!r}.")
        if cls.on_error not in (STOP, SKIP):
            raise ValueError(f"{cls.__name__}.on_error must be stop or skip, not {cls.on_error!r}.")

    def wants(self, event_type: str, category: str | None = None) -> bool:
        """Whether an event of this type (and category) is for this projection (memoised: asked per event)."""
        key = (event_type, category)
        wanted = self.__dict__.setdefault("_wanted", {}).get(key)
        if wanted is None:
            wanted = self._matches(event_type, category)
            self._wanted[key] = wanted
        return wanted

    def _matches(self, event_type: str, category: str | None) -> bool:
        if not in_categories(category, self.categories):
            return False
        return not self.event_types or any(fnmatchcase(event_type, pattern) for pattern in self.event_types)

    def handle(self, event: RecordedEvent) -> None:
        """Apply one event: calls the @on handler of its type (events without one are ignored)."""
        handler = self._handlers.get(event.event_type)
        if handler is not None:
            handler(self, event)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        """Apply a batch (events this projection wants) in one transaction.

        Override to bulk-write; the default applies each event.
        """
        for event in events:
            self.handle(event)

    def clear(self) -> None:
        """Empty the read model before a rebuild. Projections that can be rebuilt override it."""
        raise NotImplementedError(f"Projection {self.name!r} must implement clear() to be rebuilt.")
