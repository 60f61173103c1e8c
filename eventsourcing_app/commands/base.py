"""Commands: typed, validated requests to change one or more aggregates.

A command class declares its fields as DRF serializer fields, so validation,
per-field error messages and the OpenAPI schema come from one declaration::

    class AddStock(Command):
        sku = serializers.CharField(max_length=64)
        quantity = serializers.IntegerField(min_value=1)

`AddStock(sku="KETTLE", quantity=3)` builds one; the bus's validation
middleware validates it through the generated serializer before any handler
sees it, whichever way it arrived (HTTP, a shell, a saga).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from rest_framework import serializers

from ..aggregates import Aggregate, Repository
from ..exceptions import CommandValidationError, ConcurrencyError
from ..store import AppendResult, EventStore, Metadata

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    from .middleware.idempotency import DeferredClaims

A = TypeVar("A", bound=Aggregate)


class Command:
    """Base of command classes: declare DRF serializer fields as class attributes."""

    command_type: ClassVar[str]
    serializer_class: ClassVar[type[serializers.Serializer]]
    # An example body for the API docs.
    example: ClassVar[dict[str, Any] | None] = None

    def __init_subclass__(cls, *, command_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.command_type = command_type or cls.__name__
        declared = {name: value for name, value in list(cls.__dict__.items()) if isinstance(value, serializers.Field)}
        for name in declared:
            delattr(cls, name)
        inherited = getattr(cls, "serializer_class", serializers.Serializer)
        cls.serializer_class = type(f"{cls.command_type}Serializer", (inherited,), declared)

    def __init__(self, **data: Any) -> None:
        self._data = data
        self._validated: dict[str, Any] | None = None
        self.command_id = uuid.uuid4()

    @classmethod
    def from_data(cls, data: Any) -> Command:
        """A command from parsed JSON (validated later, by the bus)."""
        if not isinstance(data, Mapping):
            raise CommandValidationError({"non_field_errors": ["Expected a JSON object."]})
        return cls(**data)

    @property
    def is_validated(self) -> bool:
        return self._validated is not None

    def validate(self) -> None:
        """Validate and normalise the data; raises CommandValidationError with per-field errors."""
        if self._validated is not None:
            return
        serializer = self.serializer_class(data=self._data)
        if not serializer.is_valid():
            raise CommandValidationError(_plain_errors(serializer.errors))
        self._validated = dict(serializer.validated_data)

    @property
    def data(self) -> dict[str, Any]:
        """The validated data (the raw data until validation ran)."""
        return self._validated if self._validated is not None else dict(self._data)

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("_validated") or self.__dict__.get("_data") or {}
        if name in data:
            return data[name]
        if name in self.serializer_class._declared_fields:
            return None
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __repr__(self) -> str:
        return f"<{self.command_type} {self.command_id}>"


def _plain_errors(errors: Any) -> Any:
    """DRF's ErrorDetail tree as plain strings, lists and dicts."""
    if isinstance(errors, dict):
        return {str(key): _plain_errors(value) for key, value in errors.items()}
    if isinstance(errors, list):
        return [_plain_errors(value) for value in errors]
    return str(errors)


@dataclass(frozen=True)
class CommandResult:
    """What a dispatched command did: the aggregate it changed and the events it appended."""

    command_type: str
    aggregate_id: str | None
    stream_id: str | None
    version: int | None
    events: list[dict[str, Any]]
    correlation_id: str
    replayed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The HTTP response body (DESIGN §3)."""
        return {
            "aggregate_id": self.aggregate_id,
            "stream_id": self.stream_id,
            "version": self.version,
            "events": self.events,
            "correlation_id": self.correlation_id,
        }

    @classmethod
    def from_dict(cls, command_type: str, body: dict[str, Any], *, replayed: bool = False) -> CommandResult:
        return cls(
            command_type=command_type,
            aggregate_id=body["aggregate_id"],
            stream_id=body["stream_id"],
            version=body["version"],
            events=body["events"],
            correlation_id=body["correlation_id"],
            replayed=replayed,
        )


@dataclass
class CommandContext:
    """Everything about one dispatch that is not the command's data.

    Middleware fills it in (correlation, tenant, deadline) and handlers use it
    to load and save aggregates, so every event they append carries the
    command's metadata and the conditional version (If-Match) is enforced.
    """

    user: AbstractBaseUser | AnonymousUser | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    tenant_id: str | None = None
    idempotency_key: str | None = None
    expected_version: int | None = None
    custom_metadata: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    store: EventStore = field(default_factory=EventStore)
    # False: inside a caller's transaction the command takes no savepoint of its own, because the caller
    # undoes more than the command if it raises (the saga manager's first pass over a batch).
    savepoint: bool = True
    # With no savepoint: where the idempotency middleware leaves the key's record for the caller to
    # insert with the others of its transaction (DeferredClaims), instead of inserting it at once.
    deferred_claims: DeferredClaims | None = None
    saved: list[AppendResult] = field(default_factory=list)
    touched: Aggregate | None = None

    def metadata(self) -> Metadata:
        metadata: Metadata = {}
        for key in ("correlation_id", "causation_id", "tenant_id"):
            if (value := getattr(self, key)) is not None:
                metadata[key] = str(value)  # type: ignore[literal-required]
        if self.user is not None and getattr(self.user, "is_authenticated", False):
            metadata["user_id"] = str(self.user.pk)
        if self.custom_metadata:
            metadata["custom"] = dict(self.custom_metadata)
        return metadata

    def repository(self, aggregate_class: type[A]) -> Repository[A]:
        return Repository(aggregate_class, store=self.store)

    def load(self, aggregate_class: type[A], aggregate_id: Any) -> A:
        """Load an aggregate (StreamNotFoundError if it has no events), checked against If-Match."""
        return self._checked(self.repository(aggregate_class).load(aggregate_id))

    def load_or_new(self, aggregate_class: type[A], aggregate_id: Any) -> A:
        """Load an aggregate, or start a new one, checked against If-Match (0 for a new one)."""
        return self._checked(self.repository(aggregate_class).load_or_new(aggregate_id))

    def _checked(self, aggregate: A) -> A:
        """With If-Match, the aggregate must be at that version, else ConcurrencyError (409)."""
        if self.expected_version is not None and aggregate.version != self.expected_version:
            raise ConcurrencyError(aggregate.stream_id, self.expected_version, aggregate.version)
        self.touched = aggregate
        return aggregate

    def save(self, aggregate: Aggregate) -> AppendResult | None:
        """Append the aggregate's new events with this command's metadata."""
        result = self.repository(type(aggregate)).save(aggregate, metadata=self.metadata())
        self.touched = aggregate
        if result is not None:
            self.saved.append(result)
        return result

    def time_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def result(self, command: Command) -> CommandResult:
        events = [
            {"position": e.position, "event_type": e.event_type, "version": e.version}
            for saved in self.saved
            for e in saved.events
        ]
        aggregate = self.touched
        return CommandResult(
            command_type=command.command_type,
            aggregate_id=aggregate.id if aggregate else None,
            stream_id=aggregate.stream_id if aggregate else None,
            version=aggregate.version if aggregate else None,
            events=events,
            correlation_id=str(self.correlation_id),
        )
