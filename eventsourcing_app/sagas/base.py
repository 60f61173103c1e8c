"""Sagas: long-running processes that react to events by issuing commands, and undo their steps on failure.

A saga declares the events that start it, how an event maps to the instance it
belongs to (its correlation id), and one handler per event type. A handler
changes the instance's data and returns the commands to dispatch next, each as
a `Step` that may name the command undoing it::

    @register
    class OrderFulfillment(Saga):
        starts_with = ("OrderPlaced",)
        correlation_field = "order_id"

        @on("OrderPlaced")
        def placed(self, saga: SagaInstance, event: RecordedEvent):
            saga.compensate_with("place_order", CancelOrder(order_id=event.data.order_id))
            return [Step("reserve_stock", ReserveStock(order_id=...), compensate=ReleaseStock(order_id=...))]

When a step's command is refused by a domain rule, when a handler calls
`saga.fail()`, or when the instance's deadline passes, the compensations of the
completed steps run newest first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from ..commands import Command
from ..models import SagaState, SagaStatus
from ..projections.base import SKIP, STOP, on
from ..store import RecordedEvent

__all__ = ["SKIP", "STOP", "Saga", "SagaInstance", "Step", "on"]

# A compensation: a command, or the name of a saga method `(saga_instance) -> Command | None` run at that time.
Compensation = Command | str


@dataclass(frozen=True)
class Step:
    """One forward step: a name (unique within the saga), its command, and what undoes it."""

    name: str
    command: Command
    compensate: Compensation | None = None


class SagaInstance:
    """One saga instance as its handlers see it: its data, its status and what it should do next."""

    def __init__(self, state: SagaState, event: RecordedEvent | None = None) -> None:
        self.state = state
        self.event = event
        self.failure: str | None = None
        self.compensate_on_failure = True
        self.completed = False

    @property
    def correlation_id(self) -> str:
        return self.state.correlation_id

    @property
    def data(self) -> dict[str, Any]:
        """JSON-ready values kept between events (strings, numbers, lists, dicts)."""
        return self.state.data

    @property
    def current_step(self) -> str:
        return self.state.current_step

    @property
    def status(self) -> str:
        return self.state.status

    def complete(self) -> None:
        """Finish the saga once this handler's steps have succeeded."""
        self.completed = True

    def fail(self, reason: str, *, compensate: bool = True) -> None:
        """Give up: the completed steps' compensations run (unless `compensate=False`), newest first."""
        self.failure = reason
        self.compensate_on_failure = compensate

    def compensate_with(self, step: str, compensation: Compensation) -> None:
        """Register a compensation for something that already happened (e.g. the event that started the saga)."""
        self.state.compensations.append({"step": step, **_describe_compensation(compensation)})

    def drop_compensation(self, step: str) -> None:
        """Forget a step's compensation (its effect was undone some other way)."""
        self.state.compensations = [c for c in self.state.compensations if c["step"] != step]

    def set_deadline(self, after: timedelta | float | datetime) -> None:
        """If the saga is still running then, its `on_timeout` runs (by default: fail and compensate)."""
        if isinstance(after, datetime):
            self.state.deadline = after
        else:
            seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
            self.state.deadline = timezone.now() + timedelta(seconds=seconds)

    def clear_deadline(self) -> None:
        self.state.deadline = None


Handler = Callable[[Any, SagaInstance, RecordedEvent], Iterable[Step | Command] | None]


class Saga:
    """Base class of sagas; see the module docstring.

    Attributes:
        name: the saga type stored in SagaState (default: the class name).
        starts_with: event types that create an instance when none exists for their correlation id.
        correlation_field: the event data field naming the instance (or override `correlation_id`).
        on_error: what an unexpected error in a handler does: STOP the saga manager (visibly, in the
            saga admin and `eventsourcing_status`) or SKIP the event into a dead letter.
        batch_size: events per transaction (default SAGA_BATCH_SIZE).
        categories: stream categories (or glob patterns) whose events it handles (default: all).
            An event type is a name anyone may use; naming the categories keeps the saga to its
            own aggregates' streams, and its log reads to them.
    """

    name: ClassVar[str]
    starts_with: ClassVar[Sequence[str]] = ()
    categories: ClassVar[Sequence[str]] = ()
    correlation_field: ClassVar[str | None] = None
    on_error: ClassVar[str] = STOP
    batch_size: ClassVar[int | None] = None
    _handlers: ClassVar[dict[str, Handler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        if not re.fullmatch(r"[A-Za-z][\w.-]{0,90}", cls.name):
            raise ValueError(f"Saga name {cls.name!r}: letters, digits, '_', '.', '-', at most 91 characters.")
        handlers = dict(cls._handlers)
        for attribute in cls.__dict__.values():
            for event_type in getattr(attribute, "_handles_events", ()):
                handlers[event_type] = attribute
        cls._handlers = handlers
        missing = set(cls.starts_with) - set(handlers)
        if missing:
            raise ValueError(f"{cls.__name__}: no @on handler for its starting events {sorted(missing)}.")
        if cls.on_error not in (STOP, SKIP):
            raise ValueError(f"{cls.__name__}.on_error must be stop or skip, not {cls.on_error!r}.")

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    def correlation_id(self, event: RecordedEvent) -> str | None:
        """The instance an event belongs to; None: not for this saga. Default: `correlation_field` of its data."""
        if self.correlation_field is None:
            raise NotImplementedError(f"{type(self).__name__} must set correlation_field or override correlation_id().")
        data, field = event.data, self.correlation_field
        value = data.get(field) if isinstance(data, dict) else getattr(data, field, None)
        return None if value in (None, "") else str(value)

    def handler_for(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    def on_timeout(self, saga: SagaInstance) -> Iterable[Step | Command] | None:
        """The deadline passed while the saga was running. Default: fail, so the completed steps are undone."""
        saga.fail(f"timed out in step {saga.current_step or 'start'!r}")
        return None


ACTIVE_STATUSES = (SagaStatus.STARTED, SagaStatus.RUNNING)


def json_ready(value: Any) -> Any:
    """Command data as JSONField can store it (UUIDs, Decimals and datetimes as strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _describe_compensation(compensation: Compensation) -> dict[str, Any]:
    """A compensation as JSON kept in SagaState: a command's type and data, or a method name."""
    if isinstance(compensation, str):
        return {"method": compensation}
    if isinstance(compensation, Command):
        return {"command_type": compensation.command_type, "data": json_ready(compensation.data)}
    raise TypeError(f"A compensation is a Command or a saga method name, not {compensation!r}.")
