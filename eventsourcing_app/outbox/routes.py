"""Outbox routes: which events become messages for which destination, and how each message looks.

Routes come from `EVENTSOURCING["OUTBOX_ROUTES"]` and from code (`register_route`).
A route names event types or glob patterns ("Order*"), one destination of
`OUTBOX_DESTINATIONS`, and optionally a filter (`callable(RecordedEvent) -> bool`)
and a transform (`callable(RecordedEvent) -> dict`, the payload sent). Both may
be given as import strings.

Every append asks `wants(event_types)` first, so the answer is memoised per set
of event types: an append that no route wants costs a dict lookup and keeps the
store's fast path (PostgreSQL: one autocommit statement, no transaction).

An event matched by several routes to the same destination becomes one message:
the first route (settings first, then code, in order) whose filter accepts it
decides the payload. The message id is a UUID derived from the event id and the
destination, so it is the same on every retry and every processor.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import msgspec
from django.utils.module_loading import import_string

from ..conf import es_settings
from ..exceptions import OutboxConfigurationError
from ..store import RecordedEvent

EventFilter = Callable[[RecordedEvent], bool]
EventTransform = Callable[[RecordedEvent], dict[str, Any]]

# Namespace of message ids: uuid5(namespace, "<event id>:<destination>").
MESSAGE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:eventsourcing_app:outbox")
ROUTE_KEYS = frozenset({"events", "destination", "filter", "transform"})
DESTINATION_KEYS = frozenset({"PUBLISHER", "OPTIONS"})
# Memoised answers kept before the memo is emptied (distinct sets of event types seen in appends).
MEMO_LIMIT = 10_000

_encoder = msgspec.json.Encoder(decimal_format="string")


def message_id_for(event_id: uuid.UUID, destination: str) -> uuid.UUID:
    """The stable id of an event's message to a destination (what receivers de-duplicate by)."""
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{event_id}:{destination}")


def default_payload(event: RecordedEvent) -> dict[str, Any]:
    """The event as sent when a route has no transform: every field of the stored event, JSON-ready.

    Decimals become strings, datetimes ISO 8601, UUIDs strings. A transform may
    start from this and drop or add keys (for instance personal data, which the
    payload carries decrypted when FIELD_CIPHER is set).
    """
    return msgspec.to_builtins(
        {
            "event_id": event.event_id,
            "event_type": event.event_type,
            "stream_id": event.stream_id,
            "version": event.version,
            "position": event.position,
            "schema_version": event.schema_version,
            "data": event.data,
            "metadata": event.metadata,
            "recorded_at": event.recorded_at,
        }
    )


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """Events of these types (or glob patterns) go to `destination`, optionally filtered and reshaped.

    Compared by identity: registering the same route twice makes two routes.
    """

    events: tuple[str, ...]
    destination: str
    filter: EventFilter | None = None
    transform: EventTransform | None = None

    def matches(self, event_type: str) -> bool:
        return any(fnmatchcase(event_type, pattern) for pattern in self.events)

    def accepts(self, event: RecordedEvent) -> bool:
        return self.filter is None or bool(self.filter(event))

    def encoded_payload(self, event: RecordedEvent) -> str:
        """The payload of the event's message as JSON text (what the outbox row stores)."""
        if self.transform is None:
            payload: Any = default_payload(event)
        else:
            payload = self.transform(event)
            if not isinstance(payload, dict):
                raise TypeError(
                    f"The transform of the outbox route to {self.destination!r} returned"
                    f" {type(payload).__name__} for {event.event_type}: it must return a dict."
                )
        try:
            return _encoder.encode(payload).decode()
        except (TypeError, msgspec.EncodeError) as exc:
            raise TypeError(
                f"The payload of {event.event_type} for {self.destination!r} is not JSON-serialisable: {exc}"
            ) from exc


# ---------------------------------------------------------------- routes from code
class _CodeRoutes:
    """Routes registered from code; `version` moves on with each change, so the route table knows to rebuild."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.version = 0

    def add(self, route: Route) -> None:
        self.routes.append(route)
        self.version += 1

    def remove(self, route: Route) -> None:
        self.routes = [registered for registered in self.routes if registered is not route]
        self.version += 1


_code_routes = _CodeRoutes()


def register_route(
    events: str | Sequence[str],
    destination: str,
    *,
    filter: EventFilter | str | None = None,
    transform: EventTransform | str | None = None,
) -> Route:
    """Route events to a destination from code (e.g. in an AppConfig.ready()); returns the route.

    Raises:
        OutboxConfigurationError: no event types, an unknown destination, or a filter or
            transform that is neither callable nor an importable dotted path.
    """
    route = _build_route(
        {"events": events, "destination": destination, "filter": filter, "transform": transform},
        where="register_route()",
        destinations=_destinations_setting(),
    )
    _code_routes.add(route)
    return route


def unregister_route(route: Route) -> None:
    """Remove a route added by `register_route` (a no-op if it is not registered)."""
    _code_routes.remove(route)


# ---------------------------------------------------------------- the route table
class RouteTable:
    """All routes, with memoised answers to the two questions every append asks."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._by_type: dict[str, tuple[Route, ...]] = {}
        self._wants: dict[frozenset[str], bool] = {}

    def for_type(self, event_type: str) -> tuple[Route, ...]:
        """The routes an event of this type may take, in order."""
        found = self._by_type.get(event_type)
        if found is None:
            found = tuple(route for route in self.routes if route.matches(event_type))
            if len(self._by_type) > MEMO_LIMIT:
                self._by_type.clear()
            self._by_type[event_type] = found
        return found

    def wants(self, event_types: Iterable[str]) -> bool:
        """Whether any route matches any of these types (filters are not known before the events are)."""
        if not self.routes:
            return False
        key = frozenset(event_types)
        answer = self._wants.get(key)
        if answer is None:
            answer = any(self.for_type(event_type) for event_type in key)
            if len(self._wants) > MEMO_LIMIT:
                self._wants.clear()
            self._wants[key] = answer
        return answer


class _TableCache:
    """The route table and what it was built from."""

    source: tuple[Any, Any, int] | None = None
    table: RouteTable | None = None


_cache = _TableCache()


def route_table() -> RouteTable:
    """The current routes: rebuilt when the settings object or the registered routes change.

    The check is an identity comparison of the settings values (a new object after
    `override_settings` or a reload), so it costs nothing per append.

    Raises:
        OutboxConfigurationError: a route in the settings is invalid, or one registered from
            code goes to a destination the settings no longer have.
    """
    source = (es_settings.OUTBOX_ROUTES, es_settings.OUTBOX_DESTINATIONS, _code_routes.version)
    cached = _cache.source
    if cached is not None and cached[0] is source[0] and cached[1] is source[1] and cached[2] == source[2]:
        return _cache.table  # type: ignore[return-value]
    for route in _code_routes.routes:
        if not isinstance(source[1], dict) or route.destination not in source[1]:
            raise OutboxConfigurationError(
                f"A route registered from code goes to {route.destination!r}, which is not in"
                " EVENTSOURCING['OUTBOX_DESTINATIONS'] any more."
            )
    table = RouteTable([*_routes_from_settings(source[0], source[1]), *_code_routes.routes])
    _cache.source, _cache.table = source, table
    return table


def routes() -> list[Route]:
    """Every route in effect: those of the settings first, then those registered from code."""
    return list(route_table().routes)


def _routes_from_settings(entries: Any, destinations: Any) -> list[Route]:
    if not isinstance(entries, list | tuple):
        raise OutboxConfigurationError("EVENTSOURCING['OUTBOX_ROUTES'] must be a list of dicts.")
    return [
        _build_route(entry, where=f"EVENTSOURCING['OUTBOX_ROUTES'][{index}]", destinations=destinations)
        for index, entry in enumerate(entries)
    ]


def _build_route(entry: Any, *, where: str, destinations: Any) -> Route:
    if not isinstance(entry, dict):
        raise OutboxConfigurationError(f"{where} must be a dict with 'events' and 'destination', not {entry!r}.")
    if unknown := set(entry) - ROUTE_KEYS:
        raise OutboxConfigurationError(
            f"{where} has unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(ROUTE_KEYS))}."
        )
    events = entry.get("events")
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list | tuple) or not events or not all(isinstance(e, str) and e for e in events):
        raise OutboxConfigurationError(f"{where}: 'events' must be an event type or a non-empty list of them.")
    destination = entry.get("destination")
    known = destinations if isinstance(destinations, dict) else {}
    if destination not in known:
        raise OutboxConfigurationError(
            f"{where}: unknown destination {destination!r}; EVENTSOURCING['OUTBOX_DESTINATIONS'] has"
            f" {', '.join(map(repr, sorted(known))) or 'none'}."
        )
    return Route(
        events=tuple(events),
        destination=destination,
        filter=_callable(entry.get("filter"), f"{where} 'filter'"),
        transform=_callable(entry.get("transform"), f"{where} 'transform'"),
    )


def _callable(value: Any, where: str) -> Callable[..., Any] | None:
    if value is None or (callable(value) and not isinstance(value, str)):
        return value
    if not isinstance(value, str):
        raise OutboxConfigurationError(f"{where} must be a callable or an import string, not {value!r}.")
    try:
        imported = import_string(value)
    except ImportError as exc:
        raise OutboxConfigurationError(f"{where}: could not import {value!r}: {exc}.") from exc
    if not callable(imported):
        raise OutboxConfigurationError(f"{where}: {value!r} is not callable.")
    return imported


# ---------------------------------------------------------------- destinations
@dataclass(frozen=True, slots=True)
class Destination:
    """A configured destination: its publisher class and the options it is built with."""

    name: str
    publisher_class: type
    options: dict[str, Any]

    def build(self) -> Any:
        return self.publisher_class(**self.options)


def _destinations_setting() -> Any:
    return es_settings.OUTBOX_DESTINATIONS


def destinations() -> dict[str, Destination]:
    """OUTBOX_DESTINATIONS, validated, with each publisher class imported (not yet instantiated).

    Raises:
        OutboxConfigurationError: not a dict of {"PUBLISHER": ..., "OPTIONS": {...}}, or a
            publisher that cannot be imported or lacks publish_many()/close().
    """
    setting = _destinations_setting()
    if not isinstance(setting, dict):
        raise OutboxConfigurationError("EVENTSOURCING['OUTBOX_DESTINATIONS'] must be a dict of name -> config.")
    return {name: _destination(name, config) for name, config in setting.items()}


def _destination(name: Any, config: Any) -> Destination:
    where = f"EVENTSOURCING['OUTBOX_DESTINATIONS'][{name!r}]"
    if not isinstance(name, str) or not name or len(name) > 100:
        raise OutboxConfigurationError(f"{where}: a destination name is a non-empty string of at most 100 characters.")
    if not isinstance(config, dict) or "PUBLISHER" not in config:
        raise OutboxConfigurationError(f"{where} must be a dict with a 'PUBLISHER' import string.")
    if unknown := set(config) - DESTINATION_KEYS:
        raise OutboxConfigurationError(f"{where} has unknown keys {sorted(unknown)}; allowed: PUBLISHER, OPTIONS.")
    options = config.get("OPTIONS", {})
    if not isinstance(options, dict):
        raise OutboxConfigurationError(f"{where}['OPTIONS'] must be a dict of keyword arguments.")
    path = config["PUBLISHER"]
    try:
        publisher_class = import_string(path) if isinstance(path, str) else path
    except ImportError as exc:
        raise OutboxConfigurationError(f"{where}: could not import publisher {path!r}: {exc}.") from exc
    if not isinstance(publisher_class, type) or not all(
        callable(getattr(publisher_class, method, None)) for method in ("publish_many", "close")
    ):
        raise OutboxConfigurationError(
            f"{where}: {path!r} is not a publisher class (subclass eventsourcing_app.outbox.publishers.Publisher)."
        )
    return Destination(name=name, publisher_class=publisher_class, options=dict(options))


def configuration_problems() -> list[str]:
    """Everything wrong with OUTBOX_DESTINATIONS and OUTBOX_ROUTES, one message per problem (system check)."""
    problems = []
    try:
        destinations()
    except OutboxConfigurationError as exc:
        problems.append(str(exc))
    entries, known = es_settings.OUTBOX_ROUTES, _destinations_setting()
    if not isinstance(entries, list | tuple):
        return [*problems, "EVENTSOURCING['OUTBOX_ROUTES'] must be a list of dicts."]
    for index, entry in enumerate(entries):
        try:
            _build_route(entry, where=f"EVENTSOURCING['OUTBOX_ROUTES'][{index}]", destinations=known)
        except OutboxConfigurationError as exc:
            problems.append(str(exc))
    return problems
