"""Optimistic concurrency under real contention: many writers, one stream, expected versions.

Every append either gets a version of its own or raises ConcurrencyError with
the expected and actual versions, and the stream ends with exactly the events
that succeeded, numbered 1..n. Processes on both databases (separate
connections, no GIL), and threads too, each thread with its own connection.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from eventsourcing_app.exceptions import ConcurrencyError
from eventsourcing_app.store import DomainEvent, EventStore
from tests.workers import killed_on_exit, release, results_of, write_with_expected_versions


@dataclass(frozen=True)
class Happened(DomainEvent, event_type="tests.concurrency.Happened"):
    n: int


WRITERS = 8
ATTEMPTS = 40
# Generous: a worker that needs this long is hung, and the test must fail rather than wait forever.
WORKER_TIMEOUT = 120.0


def test_processes_appending_with_expected_versions(run_worker, tmp_path: Path, event_store: EventStore) -> None:
    stream_id = f"Counter-{uuid.uuid4()}"
    procs = [
        run_worker("versioned", stream_id, "--attempts", str(ATTEMPTS), "--barrier", str(tmp_path))
        for _ in range(WRITERS)
    ]
    with killed_on_exit(procs):
        release(tmp_path, procs)
        reports = results_of(procs, timeout=WORKER_TIMEOUT)
    _assert_versions_are_unique_and_complete(event_store, stream_id, reports)


def test_threads_appending_with_expected_versions(transactional_db: None, event_store: EventStore) -> None:
    stream_id = f"Counter-{uuid.uuid4()}"
    start = threading.Barrier(WRITERS)

    def writer() -> dict[str, Any]:
        try:
            start.wait(timeout=WORKER_TIMEOUT)
            return write_with_expected_versions(stream_id, ATTEMPTS)
        finally:
            connection.close()  # each thread opened a connection of its own

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        futures = [pool.submit(writer) for _ in range(WRITERS)]
        reports = [future.result(timeout=WORKER_TIMEOUT) for future in futures]
    _assert_versions_are_unique_and_complete(event_store, stream_id, reports)


def _assert_versions_are_unique_and_complete(
    event_store: EventStore, stream_id: str, reports: list[dict[str, Any]]
) -> None:
    successes = sorted((version, event_id) for report in reports for version, event_id in report["successes"])
    conflicts = [(expected, actual) for report in reports for expected, actual in report["conflicts"]]

    assert len(successes) + len(conflicts) == WRITERS * ATTEMPTS
    assert [version for version, _ in successes] == list(range(1, len(successes) + 1)), "duplicate or missing version"
    assert event_store.stream_info(stream_id).version == len(successes)
    stored = event_store.read_stream(stream_id)
    assert [(event.version, str(event.event_id)) for event in stored] == successes
    for report in reports:
        own = [version for version, _ in report["successes"]]
        assert all(a < b for a, b in pairwise(own)), "a writer's versions went backwards"
    # Each conflict says what the writer expected and the newer version it found instead.
    assert all(actual is not None and actual > expected for expected, actual in conflicts), conflicts
    # The writers really raced: with every writer reading then appending, some must lose.
    assert conflicts, f"no conflicts on {connection.vendor}: the writers did not overlap"


@pytest.mark.postgres
def test_transactions_appending_to_two_streams_in_opposite_orders_both_commit_after_a_retry(
    transactional_db: None, event_store: EventStore
) -> None:
    """T1 appends to A then B, T2 to B then A, interleaved: PostgreSQL aborts one as a deadlock victim.

    The victim gets a ConcurrencyError, the error a retry is for (the command bus's
    RetryMiddleware, a saga's runner), not a bare database error; retried, both commit.
    """
    t1_has_a, t2_has_b = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    conflicts: list[ConcurrencyError] = []

    def retried(work: Callable[[], None]) -> None:
        for _ in range(3):
            try:
                with transaction.atomic():
                    work()
                return
            except ConcurrencyError as conflict:
                conflicts.append(conflict)

    def first() -> None:
        def work() -> None:
            event_store.append("Pair-a", [Happened(n=1)])
            t1_has_a.set()
            t2_has_b.wait(5)
            event_store.append("Pair-b", [Happened(n=2)])

        run(lambda: retried(work))

    def second() -> None:
        def work() -> None:
            t1_has_a.wait(5)
            event_store.append("Pair-b", [Happened(n=3)])
            t2_has_b.set()
            event_store.append("Pair-a", [Happened(n=4)])

        run(lambda: retried(work))

    def run(body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(conflicts) == 1, "each waited for the other's stream row: one of them was the deadlock victim"
    assert sorted(e.data.n for e in event_store.read_stream("Pair-a")) == [1, 4]
    assert sorted(e.data.n for e in event_store.read_stream("Pair-b")) == [2, 3]
