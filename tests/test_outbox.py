"""The outbox's routes and append hook: messages written with their events, and the operators' API.

Messages are looked at as rows (what the append wrote) and as deliveries (what
a RecordingPublisher received), never through the hook's internals.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache as django_cache
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventsourcing_app.exceptions import OutboxConfigurationError, OutboxWriteError
from eventsourcing_app.models import Event, OutboxMessage, OutboxStatus
from eventsourcing_app.outbox import (
    discard,
    message_id_for,
    outbox_stats,
    register_route,
    requeue_dead,
    retry_now,
    routes,
    unregister_route,
)
from eventsourcing_app.outbox.hooks import PENDING_KEY, write_outbox_messages
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from eventsourcing_app.tasks import cleanup_outbox
from tests.outbox_publishers import DESTINATION, deliveries, destination_config

PINGED = "tests.outbox.Pinged"
PONGED = "tests.outbox.Ponged"
AUDIT = "audit"
LOG_DESTINATION = {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher"}


# ---------------------------------------------------------------- filters and transforms named by import string
def only_big(event: RecordedEvent) -> bool:
    return event.data["amount"] >= 100


def slim(event: RecordedEvent) -> dict[str, Any]:
    return {"amount": event.data["amount"], "stream": event.stream_id}


def not_a_dict(event: RecordedEvent) -> list[int]:
    return [1, 2]


NOT_CALLABLE = 42


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "deliveries.jsonl"


@pytest.fixture
def configure(settings, record_file: Path):
    """Set OUTBOX_ROUTES (and other EVENTSOURCING keys) over destinations "recorder" and "audit"."""

    def apply(outbox_routes: list[dict[str, Any]], **extra: Any) -> None:
        settings.EVENTSOURCING = {
            **settings.EVENTSOURCING,
            "OUTBOX_DESTINATIONS": {**destination_config(record_file), AUDIT: LOG_DESTINATION},
            "OUTBOX_ROUTES": outbox_routes,
            **extra,
        }

    return apply


def ping(amount: int = 1, **metadata: Any) -> NewEvent:
    return NewEvent(PINGED, {"amount": amount}, metadata=metadata)


def rows() -> list[OutboxMessage]:
    return list(OutboxMessage.objects.order_by("id"))


# ---------------------------------------------------------------- what the append writes
@pytest.mark.django_db
def test_each_routed_event_gets_one_message_per_destination(configure, event_store: EventStore) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}, {"events": ["tests.outbox.*"], "destination": AUDIT}])
    result = event_store.append("Ping-1", [ping(1, tenant_id="acme"), NewEvent(PONGED, {"x": 1})])

    pinged, ponged = result.events
    found = {(row.event_id, row.destination): row for row in rows()}
    assert set(found) == {(pinged.event_id, DESTINATION), (pinged.event_id, AUDIT), (ponged.event_id, AUDIT)}
    row = found[(pinged.event_id, DESTINATION)]
    assert row.message_id == message_id_for(pinged.event_id, DESTINATION)
    assert (row.position, row.stream_id, row.event_type, row.tenant_id) == (pinged.position, "Ping-1", PINGED, "acme")
    assert (row.status, row.attempts, row.lease_owner) == (OutboxStatus.PENDING, 0, "")
    assert found[(ponged.event_id, AUDIT)].tenant_id == ""


@pytest.mark.django_db
def test_message_ids_are_stable_per_event_and_destination() -> None:
    event_id = uuid.uuid4()
    assert message_id_for(event_id, "a") == message_id_for(event_id, "a")
    assert message_id_for(event_id, "a") != message_id_for(event_id, "b")
    assert message_id_for(event_id, "a").version == 5


@pytest.mark.django_db
def test_default_payload_is_the_whole_event_as_json(configure, event_store: EventStore) -> None:
    configure([{"events": PINGED, "destination": DESTINATION}])
    event = NewEvent(PINGED, {"amount": Decimal("12.50"), "when": timezone.now()}, metadata={"user_id": "u1"})
    recorded = event_store.append("Ping-2", [event]).events[0]

    payload = rows()[0].payload
    assert payload["event_id"] == str(recorded.event_id)
    assert payload["data"]["amount"] == "12.50"
    assert payload["metadata"] == {"user_id": "u1"}
    assert (payload["stream_id"], payload["version"], payload["position"]) == ("Ping-2", 1, recorded.position)
    assert timezone.datetime.fromisoformat(payload["recorded_at"]) == recorded.recorded_at
    assert set(payload) == {
        "event_id",
        "event_type",
        "stream_id",
        "version",
        "position",
        "schema_version",
        "data",
        "metadata",
        "recorded_at",
    }


@pytest.mark.django_db
def test_an_append_that_rolls_back_leaves_no_message(configure, event_store: EventStore) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}])
    written_before_the_rollback = []

    def append_then_fail() -> None:
        with transaction.atomic():
            event_store.append("Ping-3", [ping()])
            written_before_the_rollback.append(OutboxMessage.objects.count())
            raise RuntimeError("the command failed after appending")

    with pytest.raises(RuntimeError):
        append_then_fail()
    assert written_before_the_rollback == [1]
    assert OutboxMessage.objects.count() == 0
    assert not Event.objects.filter(stream_id="Ping-3").exists()


@pytest.mark.django_db
def test_a_failing_message_insert_rolls_the_events_back(configure, event_store: EventStore) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}])
    event = ping()
    # A row already holding this event's message makes the INSERT fail (unique event id and destination).
    OutboxMessage.objects.create(
        message_id=uuid.uuid4(),
        destination=DESTINATION,
        event_id=event.event_id,
        position=0,
        stream_id="Elsewhere-1",
        event_type=PINGED,
        payload={},
    )
    with pytest.raises(OutboxWriteError, match="Could not write 1 outbox message"), transaction.atomic():
        event_store.append("Ping-4", [event])
    assert not Event.objects.filter(stream_id="Ping-4").exists()
    assert OutboxMessage.objects.count() == 1


@pytest.mark.django_db
def test_a_transform_that_does_not_return_a_dict_fails_the_append(configure, event_store: EventStore) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION, "transform": "tests.test_outbox.not_a_dict"}])
    with pytest.raises(TypeError, match="must return a dict"), transaction.atomic():
        event_store.append("Ping-5", [ping()])
    assert not Event.objects.filter(stream_id="Ping-5").exists()


@pytest.mark.django_db
def test_filters_and_transforms_shape_what_is_sent(configure, event_store: EventStore) -> None:
    configure(
        [
            {
                "events": [PINGED],
                "destination": DESTINATION,
                "filter": "tests.test_outbox.only_big",
                "transform": "tests.test_outbox.slim",
            }
        ]
    )
    event_store.append("Ping-6", [ping(5), ping(150), ping(100)])
    assert [row.payload for row in rows()] == [
        {"amount": 150, "stream": "Ping-6"},
        {"amount": 100, "stream": "Ping-6"},
    ]


@pytest.mark.django_db
def test_glob_patterns_match_event_types(configure, event_store: EventStore) -> None:
    configure(
        [
            {"events": ["tests.outbox.Pi?ged"], "destination": DESTINATION},
            {"events": ["tests.*.Ponged"], "destination": AUDIT},
        ]
    )
    event_store.append(
        "Glob-1",
        [ping(), NewEvent(PONGED, {}), NewEvent("tests.outbox.Pinged2", {}), NewEvent("tests.Outbox.Pinged", {})],
    )
    assert [(row.event_type, row.destination) for row in rows()] == [(PINGED, DESTINATION), (PONGED, AUDIT)]


@pytest.mark.django_db
def test_two_routes_to_one_destination_make_one_message_from_the_first_that_accepts(
    configure, event_store: EventStore
) -> None:
    configure(
        [
            {"events": [PINGED], "destination": DESTINATION, "filter": "tests.test_outbox.only_big"},
            {"events": ["tests.outbox.*"], "destination": DESTINATION, "transform": "tests.test_outbox.slim"},
        ]
    )
    event_store.append("Twice-1", [ping(500), ping(1)])
    big, small = rows()
    assert big.payload["event_type"] == PINGED  # the first route: the default payload
    assert small.payload == {"amount": 1, "stream": "Twice-1"}  # the first refused it: the second's transform


@pytest.mark.django_db
def test_routes_registered_from_code_take_part_until_unregistered(configure, event_store: EventStore) -> None:
    configure([])
    route = register_route(PONGED, AUDIT, filter=lambda event: event.data["keep"])
    try:
        assert route in routes()
        event_store.append("Code-1", [NewEvent(PONGED, {"keep": True}), NewEvent(PONGED, {"keep": False})])
    finally:
        unregister_route(route)
    assert route not in routes()
    event_store.append("Code-1", [NewEvent(PONGED, {"keep": True})])
    assert [row.destination for row in rows()] == [AUDIT]


@pytest.mark.django_db
def test_register_route_refuses_bad_input(configure) -> None:
    configure([])
    with pytest.raises(OutboxConfigurationError, match=r"unknown destination 'nowhere'.*'audit', 'recorder'"):
        register_route(PINGED, "nowhere")
    with pytest.raises(OutboxConfigurationError, match=r"could not import 'tests\.no_such\.module'"):
        register_route(PINGED, AUDIT, transform="tests.no_such.module")
    with pytest.raises(OutboxConfigurationError, match="is not callable"):
        register_route(PINGED, AUDIT, filter="tests.test_outbox.NOT_CALLABLE")
    with pytest.raises(OutboxConfigurationError, match="'events' must be"):
        register_route([], AUDIT)


# ---------------------------------------------------------------- the store's fast path and query counts
@pytest.mark.django_db
def test_wants_answers_exactly_for_routed_types(configure) -> None:
    configure([{"events": ["tests.outbox.P*"], "destination": DESTINATION}])
    assert write_outbox_messages.wants({PINGED})
    assert write_outbox_messages.wants({"Other", PONGED})
    assert not write_outbox_messages.wants({"Other"})
    configure([])
    assert not write_outbox_messages.wants({PINGED})


@pytest.mark.django_db
def test_the_messages_of_an_append_are_one_insert_however_many(
    configure, event_store: EventStore, django_assert_num_queries
) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}, {"events": [PINGED], "destination": AUDIT}])
    with CaptureQueriesContext(connection) as unrouted:
        event_store.append("Count-1", [NewEvent("tests.outbox.Unrouted", {}) for _ in range(10)])
    assert OutboxMessage.objects.count() == 0

    with django_assert_num_queries(len(unrouted) + 1):
        event_store.append("Count-2", [ping(n) for n in range(10)])
    assert OutboxMessage.objects.count() == 20


@pytest.mark.django_db
def test_an_append_no_route_wants_runs_no_outbox_query(
    configure, event_store: EventStore, django_assert_num_queries
) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}])
    with CaptureQueriesContext(connection) as queries:
        event_store.append("Quiet-1", [NewEvent("tests.outbox.Unrouted", {})])
    assert not [query for query in queries if OutboxMessage._meta.db_table in query["sql"]]


# ---------------------------------------------------------------- configuration checks
@pytest.mark.django_db
def test_the_system_check_names_each_configuration_problem(settings, record_file: Path) -> None:
    settings.EVENTSOURCING = {
        "OUTBOX_DESTINATIONS": {
            "good": LOG_DESTINATION,
            "bad": {"PUBLISHER": "tests.no_such.Publisher"},
        },
        "OUTBOX_ROUTES": [
            {"events": [PINGED], "destination": "nowhere"},
            {"events": [PINGED], "destination": "good", "filter": "tests.no_such.filter"},
            {"events": [PINGED], "destination": "good", "colour": "blue"},
        ],
        "OUTBOX_BATCH_SIZE": 0,
    }
    errors = [error for error in run_checks() if error.id in {"eventsourcing_app.E003", "eventsourcing_app.E004"}]
    messages = "\n".join(error.msg for error in errors)
    assert "could not import publisher 'tests.no_such.Publisher'" in messages
    assert "unknown destination 'nowhere'" in messages
    assert "could not import 'tests.no_such.filter'" in messages
    assert "unknown keys ['colour']" in messages
    assert "EVENTSOURCING['OUTBOX_BATCH_SIZE'] must be a number >= 1." in messages


@pytest.mark.django_db
def test_a_valid_configuration_passes_the_check(configure) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION, "filter": "tests.test_outbox.only_big"}])
    assert [error for error in run_checks() if error.id in {"eventsourcing_app.E003", "eventsourcing_app.E004"}] == []


# ---------------------------------------------------------------- after commit: the nudge (Celery eager here)
@pytest.mark.django_db
def test_a_committed_append_is_delivered_by_the_nudged_task(
    configure, event_store: EventStore, record_file: Path, django_capture_on_commit_callbacks
) -> None:
    configure([{"events": [PINGED], "destination": DESTINATION}])
    django_cache.delete(PENDING_KEY)
    with django_capture_on_commit_callbacks(execute=True):
        recorded = event_store.append("Nudge-1", [ping(7)]).events[0]
    assert [d["message_id"] for d in deliveries(record_file)] == [str(message_id_for(recorded.event_id, DESTINATION))]
    assert deliveries(record_file)[0]["event"]["data"] == {"amount": 7}
    assert OutboxMessage.objects.get().status == OutboxStatus.DELIVERED


# ---------------------------------------------------------------- operators
def make_message(status: str = OutboxStatus.PENDING, **fields: Any) -> OutboxMessage:
    event_id = uuid.uuid4()
    return OutboxMessage.objects.create(
        message_id=message_id_for(event_id, DESTINATION),
        destination=fields.pop("destination", DESTINATION),
        event_id=event_id,
        position=1,
        stream_id="Ops-1",
        event_type=PINGED,
        payload={},
        status=status,
        **fields,
    )


@pytest.mark.django_db
def test_retry_now_makes_pending_messages_due(django_capture_on_commit_callbacks) -> None:
    later = timezone.now() + timedelta(hours=1)
    waiting = make_message(available_at=later, attempts=2)
    delivered = make_message(OutboxStatus.DELIVERED, available_at=later)
    with django_capture_on_commit_callbacks() as callbacks:
        assert retry_now([waiting.pk, delivered.pk]) == 1
    assert len(callbacks) == 1  # a processor run is queued
    waiting.refresh_from_db()
    delivered.refresh_from_db()
    assert waiting.available_at <= timezone.now() < delivered.available_at
    assert waiting.attempts == 2


@pytest.mark.django_db
def test_requeue_dead_gives_dead_letters_fresh_attempts() -> None:
    dead = make_message(OutboxStatus.DEAD, attempts=10, last_error="boom", available_at=timezone.now() + timedelta(1))
    pending = make_message(attempts=3)
    assert requeue_dead(OutboxMessage.objects.all()) == 1
    dead.refresh_from_db()
    pending.refresh_from_db()
    assert (dead.status, dead.attempts, dead.last_error) == (OutboxStatus.PENDING, 0, "boom")
    assert dead.available_at <= timezone.now()
    assert pending.attempts == 3


@pytest.mark.django_db
def test_discard_gives_up_on_pending_and_dead_messages_only() -> None:
    pending = make_message(lease_owner="someone", lease_expires_at=timezone.now())
    dead = make_message(OutboxStatus.DEAD)
    delivered = make_message(OutboxStatus.DELIVERED)
    assert discard(OutboxMessage.objects.all()) == 2
    statuses = {m.pk: (m.status, m.lease_owner) for m in OutboxMessage.objects.all()}
    assert statuses == {
        pending.pk: (OutboxStatus.DISCARDED, ""),
        dead.pk: (OutboxStatus.DISCARDED, ""),
        delivered.pk: (OutboxStatus.DELIVERED, ""),
    }


@pytest.mark.django_db
def test_operations_refuse_a_queryset_of_another_model() -> None:
    with pytest.raises(TypeError, match="queryset of OutboxMessage"):
        retry_now(Event.objects.all())


@pytest.mark.django_db
def test_outbox_stats_count_by_destination_and_status(configure) -> None:
    configure([])
    old = timezone.now() - timedelta(minutes=5)
    make_message(created_at=old)
    make_message()
    make_message(OutboxStatus.DEAD)
    make_message(OutboxStatus.DELIVERED, destination="retired")
    stats = {s.destination: s for s in outbox_stats().destinations}
    assert set(stats) == {DESTINATION, AUDIT, "retired"}
    recorder = stats[DESTINATION]
    assert (recorder.pending, recorder.dead, recorder.delivered, recorder.configured) == (2, 1, 0, True)
    assert recorder.oldest_pending_at == old
    assert 299 < recorder.oldest_pending_age < 400
    assert (stats[AUDIT].pending, stats[AUDIT].oldest_pending_age) == (0, None)
    assert (stats["retired"].delivered, stats["retired"].configured) == (1, False)
    assert outbox_stats().total("pending") == 2


@pytest.mark.django_db
def test_cleanup_task_deletes_only_old_delivered_messages(configure) -> None:
    configure([], OUTBOX_RETENTION_SECONDS=3600)
    now = timezone.now()
    old = make_message(OutboxStatus.DELIVERED, delivered_at=now - timedelta(hours=2))
    recent = make_message(OutboxStatus.DELIVERED, delivered_at=now - timedelta(minutes=5))
    old_dead = make_message(OutboxStatus.DEAD, created_at=now - timedelta(days=30))
    assert cleanup_outbox.delay().get() == 1
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {recent.pk, old_dead.pk}
    assert not OutboxMessage.objects.filter(pk=old.pk).exists()


# ---------------------------------------------------------------- eventsourcing_status
@pytest.mark.django_db
def test_status_reports_the_outbox_by_destination(configure, capsys) -> None:
    configure([])
    make_message(created_at=timezone.now() - timedelta(seconds=90))
    make_message(OutboxStatus.DELIVERED)
    call_command("eventsourcing_status", "--json")
    report = json.loads(capsys.readouterr().out)
    recorder = next(row for row in report["outbox"] if row["destination"] == DESTINATION)
    assert (recorder["pending"], recorder["delivered"], recorder["dead"]) == (1, 1, 0)
    assert 89 < recorder["oldest_pending_age"] < 200
    assert not [problem for problem in report["problems"] if "Outbox" in problem]


@pytest.mark.django_db
def test_status_exits_non_zero_on_dead_letters_and_orphaned_messages(configure, capsys) -> None:
    configure([])
    make_message(OutboxStatus.DEAD)
    make_message(destination="retired")
    with pytest.raises(CommandError) as raised:
        call_command("eventsourcing_status")
    assert "Outbox destination recorder: 1 dead letter(s)" in str(raised.value)
    assert "Outbox destination retired is not configured: 1 pending message(s)" in str(raised.value)
    assert "Outbox:" in capsys.readouterr().out
