"""Event classes and the registry that maps an event type name to its class."""

from __future__ import annotations

from typing import Any, ClassVar

from ..exceptions import UnknownEventTypeError
from ..registry import Registry


class EventRegistry(Registry[type["DomainEvent"]]):
    kind = "Event type"

    def class_for(self, event_type: str) -> type[DomainEvent]:
        cls = self.get(event_type)
        if cls is None:
            raise UnknownEventTypeError(f"No event class is registered as {event_type!r}.")
        return cls


event_registry = EventRegistry()


class DomainEvent:
    """Base of event classes. Subclass it and decorate the subclass with `@dataclass(frozen=True)`.

    Fields are typed, and the types decide how data is read back: `Decimal`,
    tz-aware `datetime`, `date`, `UUID`, nested dataclasses, lists and dicts all
    round-trip exactly. The class registers itself under `event_type` (default:
    the class name), so the store can turn stored rows back into instances::

        @dataclass(frozen=True)
        class StockAdded(DomainEvent, event_type="shop.StockAdded"):
            sku: str
            quantity: int
    """

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, *, event_type: str | None = None, schema_version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = event_type or cls.__name__
        cls.schema_version = schema_version
        event_registry.register(cls.event_type, cls)
