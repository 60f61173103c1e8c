"""Helpers for the tests of apps built on eventsourcing_app.

- `given(...)` appends a history of events, stream by stream: the "given" of a
  given/when/then test.
- `captured_events()` collects what the code under test appended.
- `wait_until_caught_up()` waits (or, with `run=True`, drives the runners
  in-process) until every async projection has applied the whole log, so a test
  can read the read models.

Example (pytest-django)::

    from eventsourcing_app.testing import captured_events, given, wait_until_caught_up

    def test_cancelling_an_order(db):
        given({"Order-1": [OrderPlaced(order_id="1", ...)]})
        with captured_events() as events:
            dispatch(CancelOrder(order_id="1", reason="changed my mind"))
        assert [e.event_type for e in events] == ["OrderCancelled"]
        wait_until_caught_up(run=True)
        assert OrderSummary.objects.get(order_id="1").status == "cancelled"

In a test wrapped in a transaction (pytest-django's `db`), no on-commit hook
fires, so no worker hears of the appends: use `run=True`. In a
`transactional_db` test with Celery running tasks eagerly, projections usually
are caught up already and the call returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from .models import CheckpointStatus
from .projections import ProjectionRunner, ProjectionStatus, projection_statuses
from .projections.operations import runnable
from .store import DomainEvent, EventStore, NewEvent, RecordedEvent

__all__ = ["NotCaughtUpError", "captured_events", "given", "wait_until_caught_up"]

# Seconds between two looks at the checkpoints while waiting.
POLL_INTERVAL = 0.05


class NotCaughtUpError(AssertionError):
    """Async projections did not catch up in time, or one of them failed.

    An AssertionError, so test runners report it as a failed expectation. It is
    not an EventSourcingError: the app itself never raises it.

    Attributes:
        statuses: the projections that are behind or failed, as last seen.
    """

    def __init__(self, message: str, statuses: list[ProjectionStatus]) -> None:
        super().__init__(message)
        self.statuses = statuses


def given(
    *events_by_stream: Mapping[str, Iterable[DomainEvent | NewEvent]], store: EventStore | None = None
) -> list[RecordedEvent]:
    """Append each mapping's events, stream by stream in order; the recorded events, in log order.

    Args:
        events_by_stream: mappings of stream id ("Category-id") to the events to append to it.
        store: the event store (default: `EventStore()` on the default database).

    Appends do not check versions: a history is being set up, not a command run.
    Inline projections apply them; async ones need `wait_until_caught_up()`.
    """
    store = store or EventStore()
    recorded: list[RecordedEvent] = []
    for streams in events_by_stream:
        for stream_id, events in streams.items():
            recorded.extend(store.append(stream_id, list(events)).events)
    return recorded


@contextmanager
def captured_events(*, store: EventStore | None = None) -> Iterator[list[RecordedEvent]]:
    """Yield a list that, once the block exits without error, holds the events appended inside it.

    It reads the global log after the last position committed on entry, up to the last one
    committed on exit, so it captures every event appended meanwhile, by this code or any
    other writer that committed by then.
    """
    store = store or EventStore()
    last = store.last_position()
    captured: list[RecordedEvent] = []
    yield captured
    captured.extend(store.iter_all(after=last, until=store.last_position()))


def wait_until_caught_up(timeout: float = 30.0, *, run: bool = False, sagas: bool = True) -> list[ProjectionStatus]:
    """Block until every async projection (and saga) has lag 0; returns their statuses.

    Args:
        timeout: seconds to wait before giving up.
        run: apply the pending batches in this process (for tests without workers)
            instead of only watching the checkpoints.
        sagas: wait for (or run) the sagas too. Leave them out when a test appends events by
            hand that would start a saga it is not about.

    Raises:
        NotCaughtUpError: a projection failed (at once), or some are still behind
            after `timeout` (the message lists them with their lag and status).
    """
    deadline = time.monotonic() + timeout
    runners: dict[str, ProjectionRunner] = {}
    try:
        while True:
            statuses = projection_statuses(sagas=sagas)
            _raise_if_failed(statuses)
            behind = [status for status in statuses if status.lag]
            if not behind:
                return statuses
            if time.monotonic() >= deadline:
                raise NotCaughtUpError(f"Projections not caught up after {timeout} s: {_describe(behind)}.", behind)
            if not (run and _run_batches(behind, runners)):
                time.sleep(POLL_INTERVAL)
    finally:
        for runner in runners.values():
            runner.release()


def _raise_if_failed(statuses: list[ProjectionStatus]) -> None:
    failed = [status for status in statuses if status.status == CheckpointStatus.FAILED]
    if failed:
        details = "; ".join(
            f"{status.name} at position {status.failed_position}: {status.last_error}" for status in failed
        )
        raise NotCaughtUpError(f"Projections failed: {details}", failed)


def _run_batches(behind: list[ProjectionStatus], runners: dict[str, ProjectionRunner]) -> bool:
    """One batch of each lagging projection; whether any made progress (else another worker has the lease)."""
    progressed = False
    for status in behind:
        runner = runners.get(status.name)
        if runner is None:
            runner = runners[status.name] = ProjectionRunner(runnable(status.name))
        progressed = bool(runner.run_batch()) or progressed
    return progressed


def _describe(statuses: list[ProjectionStatus]) -> str:
    return ", ".join(f"{status.name} (lag {status.lag}, {status.status})" for status in statuses)
