"""The outbox processor in one process: delivery, retries and dead letters, order per stream, leases, the command.

Messages are written by real appends (the append hook) and received by a
RecordingPublisher, whose file shows what a receiver saw and in which order.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache as django_cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest

from eventsourcing_app.exceptions import OutboxConfigurationError
from eventsourcing_app.models import OutboxMessage, OutboxStatus
from eventsourcing_app.outbox import (
    OutboxProcessor,
    Publisher,
    backoff_delay,
    discard,
    message_id_for,
    requeue_dead,
    retry_now,
)
from eventsourcing_app.outbox.hooks import PENDING_KEY
from eventsourcing_app.outbox.publishers import OutgoingMessage
from eventsourcing_app.store import EventStore, NewEvent
from eventsourcing_app.tasks import process_outbox
from tests.conftest import REPO_ROOT
from tests.outbox_publishers import DESTINATION, delivered_ids, deliveries, destination_config

PINGED = "tests.outbox.Pinged"
POISON = "tests.outbox.Poison"
AUDIT = "audit"
LOG_DESTINATION = {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher"}


class RaisingPublisher(Publisher):
    """A publisher whose whole batch call fails (a dropped connection)."""

    def publish_many(self, messages: list[OutgoingMessage]) -> list[BaseException | None]:
        raise ConnectionError("connection reset by peer")


class MiscountingPublisher(Publisher):
    """A buggy publisher that answers for fewer messages than it was given."""

    def publish_many(self, messages: list[OutgoingMessage]) -> list[BaseException | None]:
        return []


# What LeaseWatchingPublisher saw: (message id, seconds of lease the processor had left as the message arrived).
arrivals: list[tuple[str, float]] = []


class LeaseWatchingPublisher(Publisher):
    """Sends one message at a time in `seconds` each (as a webhook does) and notes the lease left at each arrival.

    With `discard_stream`, an operator discards that stream's message while the first message is on its way.
    """

    def __init__(self, *, owner: str, seconds: float = 0.1, discard_stream: str = "") -> None:
        self.owner, self.seconds, self.discard_stream = owner, seconds, discard_stream

    def publish(self, message: OutgoingMessage) -> None:
        if self.discard_stream:
            discard(OutboxMessage.objects.filter(stream_id=self.discard_stream))
            self.discard_stream = ""
        time.sleep(self.seconds)
        row = OutboxMessage.objects.get(message_id=message.message_id)
        left = (row.lease_expires_at - timezone.now()).total_seconds() if row.lease_owner == self.owner else -1.0
        arrivals.append((message.message_id, left))


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "deliveries.jsonl"


@pytest.fixture
def configure(settings, record_file: Path):
    """Route tests.outbox.* to the recorder (publisher options as given) and set other EVENTSOURCING keys."""

    def apply(*, destinations: dict[str, Any] | None = None, publisher: dict[str, Any] | None = None, **extra: Any):
        settings.EVENTSOURCING = {
            **settings.EVENTSOURCING,
            "OUTBOX_DESTINATIONS": (
                destination_config(record_file, **(publisher or {})) if destinations is None else destinations
            ),
            "OUTBOX_ROUTES": [{"events": ["tests.outbox.*"], "destination": DESTINATION}],
            "OUTBOX_RETRY_BASE_DELAY": 0.05,
            "OUTBOX_RETRY_MAX_DELAY": 0.1,
            **extra,
        }

    apply()
    return apply


def append(stream_id: str, *event_types: str) -> list[str]:
    """Append one event per type; the message ids of their messages to the recorder."""
    result = EventStore().append(stream_id, [NewEvent(event_type, {"stream": stream_id}) for event_type in event_types])
    return [str(message_id_for(event.event_id, DESTINATION)) for event in result.events]


def statuses() -> dict[str, tuple[str, int]]:
    return {str(m.message_id): (m.status, m.attempts) for m in OutboxMessage.objects.all()}


def sample(name: str, destination: str = DESTINATION) -> float:
    return REGISTRY.get_sample_value(name, {"destination": destination}) or 0.0


def process_until_idle(processor: OutboxProcessor, timeout: float = 10.0) -> None:
    """Run the processor until nothing is pending (waiting out backoffs), or fail."""
    deadline = time.monotonic() + timeout
    while OutboxMessage.objects.filter(status=OutboxStatus.PENDING).exists():
        assert time.monotonic() < deadline, f"still pending: {statuses()}"
        processor.run()
        time.sleep(0.01)


# ---------------------------------------------------------------- delivery
@pytest.mark.django_db
def test_due_messages_are_delivered_once_and_recorded(configure, record_file: Path) -> None:
    ids = append("Order-1", PINGED, PINGED) + append("Order-2", PINGED)
    delivered_before = sample("eventsourcing_outbox_delivered_total")
    latency_before = sample("eventsourcing_outbox_delivery_latency_seconds_count")

    with OutboxProcessor() as processor:
        result = processor.run()

    assert (result.claimed, result.delivered, result.failed) == (3, 3, 0)
    assert sorted(delivered_ids(record_file)) == sorted(ids)
    assert set(statuses().values()) == {(OutboxStatus.DELIVERED, 1)}
    assert not OutboxMessage.objects.filter(delivered_at__isnull=True).exists()
    assert not OutboxMessage.objects.exclude(lease_owner="").exists()
    first = deliveries(record_file)[0]
    assert first["destination"] == DESTINATION
    assert first["event"]["event_type"] == PINGED
    assert first["event"]["data"] == {"stream": first["stream_id"]}
    assert sample("eventsourcing_outbox_delivered_total") == delivered_before + 3
    assert sample("eventsourcing_outbox_delivery_latency_seconds_count") == latency_before + 3
    with OutboxProcessor() as processor:
        assert processor.run().claimed == 0  # nothing is sent twice


@pytest.mark.django_db
def test_a_claimed_message_is_not_claimed_by_another_processor_while_leased(configure) -> None:
    append("Order-3", PINGED, PINGED)
    first, second = OutboxProcessor(), OutboxProcessor()
    assert len(first.claim()) == 2
    assert second.claim() == []
    leased = OutboxMessage.objects.first()
    assert leased.lease_owner == first.owner
    assert leased.lease_expires_at > timezone.now() + timedelta(seconds=20)


@pytest.mark.django_db
def test_an_expired_lease_lets_another_processor_take_over(configure, record_file: Path) -> None:
    configure(OUTBOX_LEASE_SECONDS=1)  # long enough for the second claim to come within it on a slow machine
    ids = append("Order-4", PINGED, PINGED)
    stalled, healthy = OutboxProcessor(), OutboxProcessor()
    claimed = stalled.claim()
    assert len(claimed) == 2
    assert healthy.claim() == []

    time.sleep(1.1)  # the stalled processor's lease runs out
    assert healthy.process_batch().delivered == 2
    # The stalled processor wakes up: it finds its lease gone, sends nothing and records nothing.
    late = stalled.deliver(claimed)
    assert (late.delivered, late.failed) == (0, 0)
    assert delivered_ids(record_file) == ids
    assert set(statuses().values()) == {(OutboxStatus.DELIVERED, 1)}


def _lease_watching(configure, owner: str, **options: Any) -> None:
    arrivals.clear()
    publisher = {
        "PUBLISHER": "tests.test_outbox_processor.LeaseWatchingPublisher",
        "OPTIONS": {"owner": owner, **options},
    }
    configure(destinations={DESTINATION: publisher}, OUTBOX_LEASE_SECONDS=1)


@pytest.mark.django_db
def test_a_batch_longer_than_its_lease_keeps_the_lease_on_every_message_it_sends(configure) -> None:
    # One round of 12 streams at 0.1 s per message: 1.2 s of publishing under a 1 s lease.
    _lease_watching(configure, owner="keeper")
    ids = [message_id for n in range(12) for message_id in append(f"Order-6{n:02}", PINGED)]
    with OutboxProcessor(owner="keeper") as processor:
        result = processor.run()

    assert (result.delivered, result.failed, result.released) == (12, 0, 0)
    assert sorted(message_id for message_id, _ in arrivals) == sorted(ids)  # each sent once
    assert min(left for _, left in arrivals) > 0  # and never after its lease could have run out
    assert set(statuses().values()) == {(OutboxStatus.DELIVERED, 1)}  # messages held back by the deadline: no attempt


@pytest.mark.django_db
def test_a_batch_that_cannot_renew_its_whole_lease_stops_and_gives_the_rest_back_unsent(configure) -> None:
    # The operator discards the last stream's message while the first is sent: the renewal finds it gone.
    _lease_watching(configure, owner="keeper", discard_stream="Order-709")
    ids = [message_id for n in range(10) for message_id in append(f"Order-7{n:02}", PINGED)]
    with OutboxProcessor(owner="keeper") as processor:
        result = processor.process_batch()

    sent = [message_id for message_id, _ in arrivals]
    assert OutboxMessage.objects.get(stream_id="Order-709").status == OutboxStatus.DISCARDED
    assert 1 <= result.delivered == len(sent) < 9
    assert result.released == 9 - len(sent)
    assert min(left for _, left in arrivals) > 0
    given_back = OutboxMessage.objects.filter(status=OutboxStatus.PENDING)
    assert {str(m) for m in given_back.values_list("message_id", flat=True)} == set(ids[:9]) - set(sent)
    assert set(given_back.values_list("attempts", "lease_owner")) == {(0, "")}  # free for the next claim, untried
    with OutboxProcessor(owner="keeper") as processor:
        assert processor.run().delivered == 9 - len(sent)
    assert sorted(message_id for message_id, _ in arrivals) == sorted(ids[:9])


# ---------------------------------------------------------------- failures
def test_backoff_is_exponential_capped_and_jittered(settings) -> None:
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "OUTBOX_RETRY_BASE_DELAY": 1.0, "OUTBOX_RETRY_MAX_DELAY": 30.0}
    for attempt, planned in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (40, 30.0)]:
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert all(planned / 2 <= delay <= planned for delay in delays)
        assert len(set(delays)) > 100  # jittered, so retries of a failed batch spread out


@pytest.mark.django_db
def test_a_failed_message_is_retried_after_a_backoff_then_delivered(configure, record_file: Path) -> None:
    # A first backoff of 30-60 min, which no stall of a loaded machine can outlast before the next claim.
    configure(publisher={"fail_attempts": 2}, OUTBOX_RETRY_BASE_DELAY=3600, OUTBOX_RETRY_MAX_DELAY=3600)
    [message_id] = append("Order-5", PINGED)
    failed_before = sample("eventsourcing_outbox_failed_total")
    processor = OutboxProcessor()

    before = timezone.now()
    assert processor.process_batch().failed == 1
    message = OutboxMessage.objects.get()
    assert (message.status, message.attempts, message.lease_owner) == (OutboxStatus.PENDING, 1, "")
    assert "refused tests.outbox.Pinged on attempt 1" in message.last_error
    # First retry after 1800-3600 s (half to all of the base delay).
    assert before + timedelta(seconds=1800) <= message.available_at <= timezone.now() + timedelta(seconds=3600)
    assert processor.process_batch().claimed == 0  # not before its backoff is over

    # Attempt 2 at once (its backoff cut short); attempt 3 after a short backoff, taken up by the processor itself.
    configure(publisher={"fail_attempts": 2})
    assert retry_now(OutboxMessage.objects.all()) == 1
    process_until_idle(processor)
    message.refresh_from_db()
    assert (message.status, message.attempts, message.last_error) == (OutboxStatus.DELIVERED, 3, "")
    assert delivered_ids(record_file) == [message_id]
    assert sample("eventsourcing_outbox_failed_total") == failed_before + 2


@pytest.mark.django_db
def test_a_message_becomes_a_dead_letter_after_max_attempts(configure, record_file: Path) -> None:
    configure(publisher={"fail_event_types": [POISON]}, OUTBOX_MAX_ATTEMPTS=3)
    append("Order-6", POISON)
    dead_before = sample("eventsourcing_outbox_dead_lettered_total")
    with OutboxProcessor() as processor:
        process_until_idle(processor)
    message = OutboxMessage.objects.get()
    assert (message.status, message.attempts) == (OutboxStatus.DEAD, 3)
    assert "refused tests.outbox.Poison on attempt 3" in message.last_error
    assert delivered_ids(record_file) == []
    assert sample("eventsourcing_outbox_dead_lettered_total") == dead_before + 1


@pytest.mark.django_db
def test_a_publisher_that_raises_fails_the_whole_call(configure) -> None:
    configure(destinations={DESTINATION: {"PUBLISHER": "tests.test_outbox_processor.RaisingPublisher"}})
    append("Order-7", PINGED, PINGED)
    append("Order-8", PINGED)
    result = OutboxProcessor().process_batch()
    # Order-7's second message was released untried: its first failed.
    assert (result.failed, result.released) == (2, 1)
    assert sorted(statuses().values()) == [
        (OutboxStatus.PENDING, 0),
        (OutboxStatus.PENDING, 1),
        (OutboxStatus.PENDING, 1),
    ]
    assert "ConnectionError: connection reset by peer" in OutboxMessage.objects.filter(attempts=1).first().last_error


@pytest.mark.django_db
def test_a_publisher_that_miscounts_its_results_fails_the_call(configure) -> None:
    configure(destinations={DESTINATION: {"PUBLISHER": "tests.test_outbox_processor.MiscountingPublisher"}})
    append("Order-9", PINGED)
    assert OutboxProcessor().process_batch().failed == 1
    assert "returned 0 results for 1 messages" in OutboxMessage.objects.get().last_error


@pytest.mark.django_db
def test_a_destination_that_cannot_be_built_waits_while_others_deliver(configure, record_file: Path) -> None:
    configure(
        destinations={
            **destination_config(record_file),
            AUDIT: {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher", "OPTIONS": {"colour": 1}},
        },
        OUTBOX_ROUTES=[
            {"events": [PINGED], "destination": DESTINATION},
            {"events": [PINGED], "destination": AUDIT},
        ],
    )
    append("Order-10", PINGED)
    with OutboxProcessor() as processor:
        result = processor.run()
    assert result.delivered == 1
    assert "colour" in result.broken_destinations[AUDIT]
    audit = OutboxMessage.objects.get(destination=AUDIT)
    assert (audit.status, audit.attempts, audit.lease_owner) == (OutboxStatus.PENDING, 0, "")


# ---------------------------------------------------------------- order per stream and destination
@pytest.mark.django_db
def test_a_failure_holds_its_stream_back_and_a_dead_letter_releases_it(configure, record_file: Path) -> None:
    # An hour of backoff: no stall of a loaded machine can end it between two statements, so the hold-back
    # check cannot race it; the test ends it itself (retry_now), as an operator would.
    configure(
        publisher={"fail_event_types": [POISON]},
        OUTBOX_MAX_ATTEMPTS=2,
        OUTBOX_RETRY_BASE_DELAY=3600,
        OUTBOX_RETRY_MAX_DELAY=3600,
    )
    poison, after_poison, last = append("Order-11", POISON, PINGED, PINGED)
    other = append("Order-12", PINGED, PINGED)
    # Only the processor below may touch these messages (no commit nudge runs inside the test's transaction).
    assert set(statuses().values()) == {(OutboxStatus.PENDING, 0)}
    processor = OutboxProcessor()

    first = processor.process_batch()
    assert (first.claimed, first.delivered, first.failed, first.dead, first.released) == (5, 2, 1, 0, 2)
    assert delivered_ids(record_file) == other
    assert statuses()[poison] == (OutboxStatus.PENDING, 1)
    assert statuses()[after_poison] == statuses()[last] == (OutboxStatus.PENDING, 0)
    assert processor.process_batch().claimed == 0  # held back while the poison message waits for its retry

    assert retry_now(OutboxMessage.objects.filter(message_id=poison)) == 1
    retried = processor.process_batch()
    # The poison's last attempt fails: a dead letter; the messages behind it were held back once more.
    assert (retried.claimed, retried.delivered, retried.failed, retried.dead, retried.released) == (3, 0, 1, 1, 2)
    assert statuses()[poison] == (OutboxStatus.DEAD, 2)

    process_until_idle(processor)  # the dead letter no longer blocks its stream
    assert delivered_ids(record_file) == [*other, after_poison, last]


@pytest.mark.django_db
def test_a_publish_call_holds_at_most_one_message_per_stream(configure, record_file: Path) -> None:
    for n in range(4):
        append(f"Order-2{n}", *[PINGED] * 5)
    with OutboxProcessor() as processor:
        assert processor.run().delivered == 20
    per_call = Counter((d["call"], d["stream_id"]) for d in deliveries(record_file))
    assert set(per_call.values()) == {1}
    assert len({d["call"] for d in deliveries(record_file)}) == 5  # five rounds of four streams
    by_stream: dict[str, list[int]] = {}
    for delivery in deliveries(record_file):
        by_stream.setdefault(delivery["stream_id"], []).append(delivery["event"]["version"])
    assert all(versions == [1, 2, 3, 4, 5] for versions in by_stream.values())


@pytest.mark.django_db
def test_a_stream_is_claimed_only_as_an_unbroken_run_from_its_head(configure) -> None:
    first, second, third, fourth = append("Order-40", PINGED, PINGED, PINGED, PINGED)
    OutboxMessage.objects.filter(message_id=first).update(status=OutboxStatus.DEAD)
    holder = OutboxProcessor(batch_size=2)
    assert [m.message_id for m in holder.claim()] == [second, third]  # a dead letter does not block

    # An operator requeues the dead letter: it is the stream's head again and free to go, but the
    # fourth message waits for the third, which is out with the first processor.
    assert requeue_dead(OutboxMessage.objects.filter(message_id=first)) == 1
    assert [m.message_id for m in OutboxProcessor().claim()] == [first]
    assert OutboxMessage.objects.get(message_id=fourth).lease_owner == ""


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_message_another_transaction_has_locked_holds_its_stream_back(configure) -> None:
    """SKIP LOCKED passes over a row another processor is claiming: its stream's later messages must wait too."""
    # Written directly: in this transactional test an append's commit nudge would deliver them at once.
    locked_head, behind, other = _message("Order-41"), _message("Order-41"), _message("Order-42")
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with transaction.atomic():
            OutboxMessage.objects.select_for_update().get(message_id=locked_head)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        assert [m.message_id for m in OutboxProcessor().claim()] == [other]
    finally:
        release.set()
        holder.join()
    assert [m.message_id for m in OutboxProcessor().claim()] == [locked_head, behind]


@pytest.mark.django_db
def test_the_task_hands_over_to_a_continuation_when_out_of_time(configure, record_file: Path) -> None:
    configure(OUTBOX_TASK_SECONDS=0, OUTBOX_BATCH_SIZE=1)
    ids = append("Order-43", PINGED) + append("Order-44", PINGED) + append("Order-45", PINGED)
    django_cache.delete(PENDING_KEY)
    process_outbox.delay()  # eager here: each continuation runs as soon as it is queued
    assert sorted(delivered_ids(record_file)) == sorted(ids)
    assert not django_cache.get(PENDING_KEY)


@pytest.mark.django_db
def test_processors_can_be_limited_to_destinations(configure, record_file: Path) -> None:
    configure(
        destinations={**destination_config(record_file), AUDIT: LOG_DESTINATION},
        OUTBOX_ROUTES=[{"events": [PINGED], "destination": DESTINATION}, {"events": [PINGED], "destination": AUDIT}],
    )
    append("Order-30", PINGED)
    with OutboxProcessor(destinations=[AUDIT]) as processor:
        assert processor.run().delivered == 1
    assert OutboxMessage.objects.get(destination=DESTINATION).status == OutboxStatus.PENDING
    assert OutboxMessage.objects.get(destination=AUDIT).status == OutboxStatus.DELIVERED
    with pytest.raises(OutboxConfigurationError, match=r"Unknown outbox destination\(s\) 'nope'.*'audit', 'recorder'"):
        OutboxProcessor(destinations=["nope"])


# ---------------------------------------------------------------- metrics
@pytest.mark.django_db
def test_pending_messages_are_exported_as_a_gauge(configure) -> None:
    append("Order-31", PINGED, PINGED)
    exported = generate_latest().decode()
    assert f'eventsourcing_outbox_pending{{destination="{DESTINATION}"}} 2.0' in exported
    assert f'eventsourcing_outbox_oldest_pending_age_seconds{{destination="{DESTINATION}"}}' in exported


# ---------------------------------------------------------------- manage.py process_outbox
@pytest.mark.django_db
def test_process_outbox_once_publishes_what_is_due(configure, record_file: Path, capsys) -> None:
    ids = append("Order-32", PINGED, PINGED)
    call_command("process_outbox", "--once", "--batch-size", "1")
    assert "Delivered 2, failed 0 (will retry), dead-lettered 0, in 2 batch(es)." in capsys.readouterr().out
    assert delivered_ids(record_file) == ids


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size must be a positive number."),
        (["--interval", "-1"], "--interval must be >= 0."),
        (["--destination", "nope"], "Unknown outbox destination(s) 'nope'. Configured: 'recorder'."),
    ],
)
def test_process_outbox_refuses_bad_arguments(configure, args: list[str], message: str) -> None:
    with pytest.raises(CommandError) as raised:
        call_command("process_outbox", "--once", *args)
    assert str(raised.value) == message


@pytest.mark.django_db
def test_process_outbox_needs_a_destination(configure) -> None:
    configure(destinations={}, OUTBOX_ROUTES=[])
    with pytest.raises(CommandError, match="No outbox destinations are configured"):
        call_command("process_outbox", "--once")


@pytest.mark.django_db
def test_process_outbox_exits_non_zero_with_a_message_and_no_traceback(worker_env: dict[str, str], tmp_path) -> None:
    env = {**worker_env, "DJANGO_SETTINGS_MODULE": "tests.outbox_settings", "OUTBOX_TEST_FILE": str(tmp_path / "f")}
    done = subprocess.run(
        [sys.executable, "manage.py", "process_outbox", "--once", "--destination", "nope"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Unknown outbox destination(s) 'nope'. Configured: 'recorder'." in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.django_db(transaction=True)
def test_process_outbox_loop_publishes_then_stops_on_sigterm(worker_env: dict[str, str], tmp_path: Path) -> None:
    record_file = tmp_path / "loop.jsonl"
    env = {**worker_env, "DJANGO_SETTINGS_MODULE": "tests.outbox_settings", "OUTBOX_TEST_FILE": str(record_file)}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "process_outbox", "--interval", "0.05"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        message_id = _message("Loop-1")
        deadline = time.monotonic() + 30
        while message_id not in delivered_ids(record_file):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the loop did not deliver the message"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "Stopped." in stdout
    assert OutboxMessage.objects.get().status == OutboxStatus.DELIVERED


def _message(stream_id: str) -> str:
    """A pending message written directly, without an append (so no commit nudge runs); its message id."""
    event_id = uuid.uuid4()
    message = OutboxMessage.objects.create(
        message_id=message_id_for(event_id, DESTINATION),
        destination=DESTINATION,
        event_id=event_id,
        position=1,
        stream_id=stream_id,
        event_type=PINGED,
        payload={"n": 1},
    )
    return str(message.message_id)
