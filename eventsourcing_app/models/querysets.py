"""Named QuerySet methods, and the guard that keeps events append-only."""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models

from ..exceptions import ImmutableEventError


class StreamQuerySet(models.QuerySet):
    def in_category(self, category: str) -> StreamQuerySet:
        return self.filter(category=category)

    def delete(self) -> NoReturn:
        raise ImmutableEventError("Streams hold immutable events and cannot be deleted.")

    def update(self, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError("Stream versions are maintained by EventStore.append().")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError("Stream versions are maintained by EventStore.append().")


class EventQuerySet(models.QuerySet):
    """Read-only: events are written by `EventStore.append()` and never changed."""

    def after_position(self, position: int) -> EventQuerySet:
        return self.filter(position__gt=position).order_by("position")

    def of_types(self, *event_types: str) -> EventQuerySet:
        return self.filter(event_type__in=event_types)

    def in_category(self, category: str) -> EventQuerySet:
        return self.filter(category=category)

    def update(self, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def delete(self) -> NoReturn:
        raise ImmutableEventError()

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def bulk_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def create(self, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def get_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()
