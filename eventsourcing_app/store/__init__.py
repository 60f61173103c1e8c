"""The event store: append to streams, read streams and the global log."""

from .event_store import EventStore, category_of
from .events import DomainEvent, event_registry
from .records import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendResult,
    ExpectedVersion,
    Metadata,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    StreamState,
)

__all__ = [
    "ANY",
    "NO_STREAM",
    "STREAM_EXISTS",
    "AppendResult",
    "DomainEvent",
    "EventStore",
    "ExpectedVersion",
    "Metadata",
    "NewEvent",
    "RecordedEvent",
    "StreamInfo",
    "StreamState",
    "category_of",
    "event_registry",
]
