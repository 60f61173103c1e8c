"""Values that cross the store's boundary: what is appended and what is read back."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias, TypedDict

from .events import DomainEvent


class StreamState(enum.Enum):
    """Expected states of a stream that are not an exact version."""

    ANY = "any"
    NO_STREAM = "no_stream"
    STREAM_EXISTS = "stream_exists"

    def __str__(self) -> str:
        return self.name


ANY = StreamState.ANY
NO_STREAM = StreamState.NO_STREAM
STREAM_EXISTS = StreamState.STREAM_EXISTS

# An exact version (0 means the stream has no events, like NO_STREAM) or a StreamState.
ExpectedVersion: TypeAlias = int | StreamState


class Metadata(TypedDict, total=False):
    """What an event records about why and for whom it was written."""

    correlation_id: str
    causation_id: str
    user_id: str
    tenant_id: str
    custom: dict[str, Any]


METADATA_KEYS = frozenset(Metadata.__annotations__)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. Build one from a domain event with `NewEvent.of()`."""

    event_type: str
    data: Any
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    metadata: Metadata = field(default_factory=dict)  # type: ignore[assignment]
    schema_version: int = 1

    @classmethod
    def of(cls, event: DomainEvent, *, event_id: uuid.UUID | None = None, metadata: Metadata | None = None) -> NewEvent:
        return cls(
            event_type=event.event_type,
            data=event,
            event_id=event_id or uuid.uuid4(),
            metadata=metadata or {},
            schema_version=event.schema_version,
        )


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as stored. `data` is an instance of its event class, or a dict if none is registered."""

    position: int
    event_id: uuid.UUID
    stream_id: str
    version: int
    event_type: str
    schema_version: int
    data: Any
    metadata: dict[str, Any]
    recorded_at: datetime

    @property
    def category(self) -> str:
        return self.stream_id.split("-", 1)[0]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """The stream's version after an append and the events it recorded, in order."""

    stream_id: str
    version: int
    events: list[RecordedEvent]

    @property
    def first_position(self) -> int:
        return self.events[0].position

    @property
    def last_position(self) -> int:
        return self.events[-1].position


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What is known about a stream without reading its events."""

    stream_id: str
    category: str
    version: int
    created_at: datetime
    updated_at: datetime
