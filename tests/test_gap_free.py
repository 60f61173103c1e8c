"""The global log is gap-free: a reader following it by position sees every committed event once.

Writer processes append to random streams (plain, multi-event, expected
versions, transactions held open after the INSERT, transactions rolled back on
purpose to leave holes in the positions) while a reader process follows the log
with `read_all(after=last)`. The reader never re-scans, so an event that commits
below a position it has already read is missed and the test fails: on
PostgreSQL only the gap-free trigger prevents that, on SQLite its single
writer does. Runs `stress_seconds` (a few seconds; a minute with --run-slow).
"""

from __future__ import annotations

import threading
from itertools import pairwise
from pathlib import Path

import pytest
from django.db import connection, transaction

from eventsourcing_app.store import EventStore, NewEvent
from tests.workers import killed_on_exit, release, results_of

WRITERS = 4
# Time for a worker to start and finish beyond its stress_seconds; past it the worker is hung.
WORKER_GRACE = 120.0


def test_reader_following_the_log_sees_every_committed_event_once(
    run_worker, tmp_path: Path, stress_seconds: float, event_store: EventStore
) -> None:
    stop_file = tmp_path / "stop"
    reader = run_worker("reader", "--barrier", str(tmp_path), "--stop-file", str(stop_file))
    writers = [
        run_worker("writer", "--barrier", str(tmp_path), "--seconds", str(stress_seconds), "--seed", str(seed))
        for seed in range(WRITERS)
    ]
    with killed_on_exit([reader, *writers]):
        release(tmp_path, [reader, *writers])
        written = results_of(writers, timeout=stress_seconds + WORKER_GRACE)
        stop_file.touch()
        [followed] = results_of([reader], timeout=WORKER_GRACE)

    committed = {event_id for report in written for event_id in report["committed"]}
    rolled_back = {event_id for report in written for event_id in report["rolled_back"]}
    positions = [position for position, _ in followed["events"]]
    seen = [event_id for _, event_id in followed["events"]]

    assert all(a < b for a, b in pairwise(positions)), "the reader saw positions out of order"
    assert len(seen) == len(set(seen)), "the reader saw an event twice"
    missed, unexpected = committed - set(seen), set(seen) - committed
    assert not missed, f"the reader skipped {len(missed)} of {len(committed)} committed events"
    assert not unexpected & rolled_back, "the reader saw events of rolled-back transactions"
    assert not unexpected, f"the reader saw {len(unexpected)} events no writer committed"
    assert {str(event.event_id) for event in event_store.iter_all()} == committed

    # The run exercised what it claims: rollbacks happened and the reader followed while writers wrote.
    assert rolled_back, "no transaction rolled back"
    assert followed["live"] > 0, "the reader read nothing while the writers ran"
    if connection.vendor == "postgresql":
        # Rolled-back transactions used up sequence values: the reader had holes to step over.
        assert positions[-1] - positions[0] + 1 > len(positions), "no holes in the positions"


@pytest.mark.postgres
def test_readers_stop_below_a_transaction_still_writing_and_see_it_once_it_commits(
    transactional_db: None, event_store: EventStore
) -> None:
    """T1 takes a position and stays open; T2 takes the next one and commits: T2's event waits for T1's."""
    start = event_store.head_position()
    appended, release_t1 = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                event_store.append("Slow-t1", [NewEvent("tests.Tick", {"n": 1})])
                appended.set()
                release_t1.wait(10)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    t1 = threading.Thread(target=slow_writer)
    t1.start()
    try:
        assert appended.wait(10)
        t2 = event_store.append("Fast-t2", [NewEvent("tests.Tick", {"n": 2})]).events[0]

        assert event_store.head_position() < t2.position
        assert event_store.read_all(after=start) == []  # T2 is committed, but T1 may still commit below it
    finally:
        release_t1.set()
        t1.join(10)
    assert not errors, errors
    assert [(e.stream_id, e.data["n"]) for e in event_store.read_all(after=start)] == [("Slow-t1", 1), ("Fast-t2", 2)]
    assert event_store.head_position() == event_store.last_position() == t2.position  # nobody in flight
