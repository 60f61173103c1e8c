"""The outbox under concurrency and crashes, with real processes: several processors, SIGKILL, Celery workers.

Processors run as separate processes (`python -m tests.outbox_workers`) on the
test database and publish to a RecordingPublisher, whose file is what the
receiver saw, in order. The proofs are counts over that file: every message
delivered, none twice when nothing crashed, nothing lost when a processor was
killed, and each stream's messages first received in order.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.cache import cache as django_cache
from django.utils import timezone

from eventsourcing_app.models import OutboxMessage, OutboxStatus
from eventsourcing_app.outbox import OutboxProcessor, message_id_for
from eventsourcing_app.outbox.hooks import PENDING_KEY
from eventsourcing_app.store import EventStore, NewEvent
from tests.celery_helpers import CeleryWorkers, own_queue, print_uncaptured, wait_for
from tests.conftest import REPO_ROOT
from tests.outbox_publishers import DESTINATION, delivered_ids, deliveries, destination_config
from tests.workers import killed_on_exit, release, results_of

pytestmark = pytest.mark.django_db(transaction=True)

PINGED = "tests.outbox.Pinged"
# Seconds the processors get to empty the outbox.
RUN_TIMEOUT = 120.0


def seed_messages(count: int, streams: int | None, seed: int = 0) -> list[str]:
    """`count` pending messages spread at random over `streams` streams (ids interleave), or each on a stream
    of its own (None, like the shop's orders); their message ids."""
    rng = random.Random(seed)
    now = timezone.now()
    rows = []
    for position in range(1, count + 1):
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        rows.append(
            OutboxMessage(
                message_id=message_id_for(event_id, DESTINATION),
                destination=DESTINATION,
                event_id=event_id,
                position=position,
                stream_id=f"Stress-{position if streams is None else rng.randrange(streams)}",
                event_type=PINGED,
                payload={"position": position},
                available_at=now,
                created_at=now,
            )
        )
    OutboxMessage.objects.bulk_create(rows, batch_size=1000)
    return [str(row.message_id) for row in rows]


def first_deliveries_in_order(path: Path) -> bool:
    """Whether each stream's messages were first received in position order (later repeats are redeliveries)."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for delivery in deliveries(path):
        if delivery["message_id"] in seen:
            continue
        seen.add(delivery["message_id"])
        position = delivery["event"]["position"]
        if position < last.get(delivery["stream_id"], 0):
            return False
        last[delivery["stream_id"]] = position
    return True


@pytest.fixture
def start_processors(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    """Start processor processes at a barrier; they are killed when the test ends if still running."""
    started: list[subprocess.Popen] = []

    def start(count: int, record_file: Path, *args: str) -> list[subprocess.Popen]:
        barrier = tmp_path / f"barrier-{len(started)}"
        barrier.mkdir()
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.outbox_workers",
                    "--barrier",
                    str(barrier),
                    "--file",
                    str(record_file),
                    *args,
                ],
                cwd=REPO_ROOT,
                env=worker_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(count)
        ]
        started.extend(procs)
        release(barrier, procs)
        return procs

    with killed_on_exit(started):
        yield start


def _run_processors_together(start_processors, tmp_path: Path, *, messages: int, processors: int) -> None:
    ids = seed_messages(messages, streams=200)
    record_file = tmp_path / "deliveries.jsonl"
    procs = start_processors(processors, record_file, "--batch-size", "100", "--until-empty")
    results = results_of(procs, timeout=RUN_TIMEOUT)

    received = Counter(delivered_ids(record_file))
    assert set(received) == set(ids)  # every message delivered…
    assert [message for message, times in received.items() if times > 1] == []  # …none twice
    assert sum(result["delivered"] for result in results) == messages
    assert set(OutboxMessage.objects.values_list("status", "attempts").distinct()) == {(OutboxStatus.DELIVERED, 1)}
    assert first_deliveries_in_order(record_file)
    # They really ran side by side (a processor started late could find little left, so not all three).
    assert len({delivery["pid"] for delivery in deliveries(record_file)}) >= 2


def test_three_processors_deliver_every_message_exactly_once(start_processors, tmp_path: Path) -> None:
    _run_processors_together(start_processors, tmp_path, messages=5000, processors=3)


@pytest.mark.slow
def test_four_processors_deliver_twenty_thousand_messages_exactly_once(start_processors, tmp_path: Path) -> None:
    _run_processors_together(start_processors, tmp_path, messages=20_000, processors=4)


def test_slow_publishing_under_a_short_lease_sends_no_message_twice(start_processors, tmp_path: Path) -> None:
    """Wide rounds of a slow publisher outlast the lease: a processor must keep it while it publishes.

    30 streams of one message each; the processors claim 20 and 10. At 0.1 s per message the first
    batch takes 2 s against a 1 s lease: the second processor, done after 1 s, keeps claiming what is
    due, and would take (and send again) whatever of the first batch the lease no longer covers.
    """
    ids = seed_messages(30, streams=None)
    record_file = tmp_path / "deliveries.jsonl"
    procs = start_processors(
        2, record_file, "--batch-size", "20", "--message-delay", "0.1", "--lease-seconds", "1", "--until-empty"
    )
    # Losing the lease mid-batch, they would take each other's batch over and over, recording nothing: no end.
    results = results_of(procs, timeout=30)

    received = Counter(delivered_ids(record_file))
    assert [message for message, times in received.items() if times > 1] == []  # none twice…
    assert set(received) == set(ids)  # …and every one delivered
    assert sum(result["delivered"] for result in results) == 30
    assert set(OutboxMessage.objects.values_list("status", "attempts").distinct()) == {(OutboxStatus.DELIVERED, 1)}
    assert all(result["delivered"] for result in results)  # both published, side by side


def test_a_processor_killed_mid_batch_loses_nothing(start_processors, tmp_path: Path, settings) -> None:
    ids = seed_messages(600, streams=10)
    record_file = tmp_path / "deliveries.jsonl"
    # Batches of 200 over 10 streams take ~20 publish rounds of 0.05 s each: a kill lands mid-batch.
    [proc] = start_processors(1, record_file, "--batch-size", "200", "--delay", "0.05", "--lease-seconds", "1")
    wait_for(lambda: len(delivered_ids(record_file)) >= 30 or proc.poll() is not None, 30, "no delivery")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    leased = OutboxMessage.objects.filter(status=OutboxStatus.PENDING).exclude(lease_owner="")
    sent_before_the_kill = set(delivered_ids(record_file))
    recorded = {
        str(message_id)
        for message_id in OutboxMessage.objects.filter(status=OutboxStatus.DELIVERED).values_list(
            "message_id", flat=True
        )
    }
    assert leased.exists()  # it died holding a batch…
    assert sent_before_the_kill - recorded  # …some of which it had sent without recording it

    settings.EVENTSOURCING = {
        **settings.EVENTSOURCING,
        "OUTBOX_DESTINATIONS": destination_config(record_file),
        "OUTBOX_ROUTES": [],
        "OUTBOX_LEASE_SECONDS": 1,
    }
    deadline = time.monotonic() + 30
    with OutboxProcessor() as survivor:
        while OutboxMessage.objects.filter(status=OutboxStatus.PENDING).exists():
            assert time.monotonic() < deadline, "the survivor did not empty the outbox"
            survivor.run()
            time.sleep(0.05)

    received = Counter(delivered_ids(record_file))
    assert set(received) >= set(ids)  # nothing lost
    # Only what the killed processor had sent without recording it was sent again.
    assert {message for message, times in received.items() if times > 1} <= sent_before_the_kill
    assert not OutboxMessage.objects.exclude(status=OutboxStatus.DELIVERED).exists()
    assert first_deliveries_in_order(record_file)


@pytest.mark.celery
def test_a_celery_worker_delivers_an_append_after_the_commit_nudge(
    worker_env: dict[str, str], tmp_path: Path, settings, request: pytest.FixtureRequest
) -> None:
    record_file = tmp_path / "celery.jsonl"
    settings.EVENTSOURCING = {
        **settings.EVENTSOURCING,
        "OUTBOX_DESTINATIONS": destination_config(record_file),
        "OUTBOX_ROUTES": [{"events": [PINGED], "destination": DESTINATION}],
    }
    with own_queue() as queue:
        env = {
            **worker_env,
            "CELERY_TASK_DEFAULT_QUEUE": queue,
            "DJANGO_SETTINGS_MODULE": "tests.outbox_settings",
            "OUTBOX_TEST_FILE": str(record_file),
        }
        workers = CeleryWorkers(env, queue, tmp_path)
        try:
            [worker] = workers.start(1)
            django_cache.delete(PENDING_KEY)  # a mark left by an earlier run would swallow the nudge
            event = EventStore().append("Celery-1", [NewEvent(PINGED, {"n": 1})]).events[0]
            message_id = str(message_id_for(event.event_id, DESTINATION))
            wait_for(lambda: message_id in delivered_ids(record_file), 30, "the worker did not deliver the message")
        except BaseException:
            print_uncaptured(request, f"\n===== celery worker log =====\n{workers.logs()}")
            raise
        finally:
            workers.stop_all()
    assert [d["pid"] for d in deliveries(record_file)] == [worker.pid]
    assert OutboxMessage.objects.get().status == OutboxStatus.DELIVERED
