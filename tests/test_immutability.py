"""Every way of changing or deleting a stored event is refused."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from eventsourcing_app.exceptions import ImmutableEventError
from eventsourcing_app.models import Event, Stream
from tests.factories import StoredEventFactory, StreamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def event() -> Event:
    return StoredEventFactory()


def test_model_save_is_refused(event: Event) -> None:
    event.event_type = "Tampered"
    with pytest.raises(ImmutableEventError):
        event.save()


def test_model_delete_is_refused(event: Event) -> None:
    with pytest.raises(ImmutableEventError):
        event.delete()


def test_creating_through_the_orm_is_refused(event: Event) -> None:
    with pytest.raises(ImmutableEventError):
        Event.objects.create(stream_id=event.stream_id, version=99, event_type="X", data={})
    with pytest.raises(ImmutableEventError):
        Event.objects.bulk_create([Event(stream_id=event.stream_id, version=99, event_type="X", data={})])


@pytest.mark.parametrize(
    "attempt",
    [
        lambda qs: qs.update(event_type="Tampered"),
        lambda qs: qs.delete(),
        lambda qs: qs.bulk_update(list(qs), ["event_type"]),
        lambda qs: qs.update_or_create(position=1, defaults={"event_type": "X"}),
        lambda qs: qs.get_or_create(position=10**9, defaults={"event_type": "X"}),
    ],
    ids=["update", "delete", "bulk_update", "update_or_create", "get_or_create"],
)
def test_queryset_writes_are_refused(event: Event, attempt) -> None:
    with pytest.raises(ImmutableEventError):
        attempt(Event.objects.filter(pk=event.pk))
    assert Event.objects.get(pk=event.pk).event_type == event.event_type


def test_streams_cannot_be_changed_or_deleted() -> None:
    stream = StreamFactory(events=2)
    with pytest.raises(ImmutableEventError):
        stream.delete()
    with pytest.raises(ImmutableEventError):
        Stream.objects.filter(pk=stream.pk).delete()
    with pytest.raises(ImmutableEventError):
        Stream.objects.filter(pk=stream.pk).update(version=0)
    stream.version = 0
    with pytest.raises(ImmutableEventError):
        stream.save()
    assert Stream.objects.get(pk=stream.pk).version == 2


@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE eventsourcing_event SET event_type = 'Tampered' WHERE position = %s",
        "UPDATE eventsourcing_event SET data = '{}'::jsonb WHERE position = %s",
        "DELETE FROM eventsourcing_event WHERE position = %s",
    ],
)
def test_postgresql_trigger_refuses_raw_update_and_delete(event: Event, sql: str) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [event.pk])
    assert Event.objects.get(pk=event.pk).event_type == event.event_type
