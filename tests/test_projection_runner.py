"""The async projection runner: exactly once, leases, poison events, retries, batch mode, rebuild, crashes.

Runners are driven in-process (no Celery worker); threads and worker processes
(`tests/projection_workers.py`) are used where concurrency is the point. The
read model is the ledger of `tests.projection_workers`: applying an event twice
fails on a unique key, and its totals are compared with a from-scratch fold of
the log.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import OperationalError, connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eventsourcing_app.models import Checkpoint, CheckpointStatus, ProjectionDeadLetter
from eventsourcing_app.projections import (
    SKIP,
    Projection,
    ProjectionRunner,
    ProjectionStatus,
    on,
    projection_statuses,
    rebuild,
    resume,
    retry_dead_letters,
)
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from project.shop.models import OrderSummary
from tests.conftest import REPO_ROOT
from tests.projection_workers import (
    CATEGORY,
    TICK,
    LedgerProjection,
    apply_ledger,
    expected_ledger,
    ledger_state,
    registered,
    reset_ledger,
    tick,
)
from tests.workers import killed_on_exit, release, results_of

WORKER = [sys.executable, "-m", "tests.projection_workers"]
# Longest a test waits for threads or processes before it fails instead of hanging.
WAIT_SECONDS = 60.0


# ------------------------------------------------------------------ projections of these tests
class RecordingLedger(LedgerProjection):
    """The ledger, remembering the size of every batch it was given."""

    name = "ledger"

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        self.batch_sizes.append(len(events))
        super().handle_batch(events)


class PoisonableLedger(Projection):
    """Event by event (@on handler, default handle_batch); chokes on poison ticks until `fixed`."""

    name = "poisonable"
    categories = (CATEGORY,)

    def __init__(self) -> None:
        self.fixed = False

    @on(TICK)
    def apply(self, event: RecordedEvent) -> None:
        if event.data["poison"] and not self.fixed:
            raise ValueError(f"cannot apply the poison tick at position {event.position}")
        apply_ledger(self.name, [event])

    def clear(self) -> None:
        reset_ledger(self.name)


class SkippingLedger(PoisonableLedger):
    name = "skipping"
    on_error = SKIP


class BatchPoisonableLedger(LedgerProjection):
    """Batch mode; a batch holding a poison tick fails as a whole until `fixed`."""

    name = "batch_poisonable"

    def __init__(self) -> None:
        self.fixed = False
        self.batches: list[tuple[int, bool]] = []  # (size, applied)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        poisoned = not self.fixed and any(event.data["poison"] for event in events)
        self.batches.append((len(events), not poisoned))
        if poisoned:
            raise ValueError("a poison tick in the batch")
        super().handle_batch(events)


class FlakyLedger(LedgerProjection):
    """Its first `failures` batches hit a transient database error (as when a connection drops)."""

    name = "flaky_ledger"

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.attempts = 0

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise OperationalError("server closed the connection unexpectedly")
        super().handle_batch(events)


class CountingLedger(LedgerProjection):
    """Only the counter, no unique rows: a double application would not fail, it would only add up twice."""

    name = "counting_ledger"
    unique_rows = False


class StallingLedger(LedgerProjection):
    """The ledger; its first batch waits for `go` after writing, inside its transaction."""

    name = "stalling_ledger"

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.go = threading.Event()

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        super().handle_batch(events)
        if not self.inside.is_set():
            self.inside.set()
            assert self.go.wait(WAIT_SECONDS)


class StallingStore(EventStore):
    """A store whose first log read waits for `go` once it has read: a runner stalled between read and write."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()
        self.go = threading.Event()

    def read_all(self, **kwargs: Any) -> list[RecordedEvent]:
        events = super().read_all(**kwargs)
        if not self.inside.is_set():
            self.inside.set()
            assert self.go.wait(WAIT_SECONDS)
        return events


# ------------------------------------------------------------------ helpers
def append_ticks(store: EventStore, count: int, *, poison_at: int | None = None) -> list[RecordedEvent]:
    """`count` ledger ticks over a few streams, in appends of 1-4, with unwanted events in between.

    `poison_at` is the index (among the ticks) of the one poison tick. Returns the ticks as recorded.
    """
    rng = random.Random(count)
    ticks: list[RecordedEvent] = []
    while len(ticks) < count:
        size = min(rng.randint(1, 4), count - len(ticks))
        events = [tick(rng.randint(1, 9), poison=len(ticks) + n == poison_at) for n in range(size)]
        ticks += store.append(f"{CATEGORY}-{rng.randrange(5)}", events).events
        if rng.random() < 0.3:
            store.append(f"Noise-{rng.randrange(3)}", [NewEvent("NoiseHappened", {})])
        if rng.random() < 0.2:
            store.append(f"Elsewhere-{rng.randrange(3)}", [tick(100)])  # a tick, but not in the Ledger category
    return ticks


def checkpoint(name: str) -> Checkpoint:
    return Checkpoint.objects.get(name=name)


def status_of(name: str) -> ProjectionStatus:
    (status,) = [status for status in projection_statuses() if status.name == name]
    return status


def expire_lease(name: str) -> None:
    """Move the holder's lease into the past, as if its worker had been silent for too long."""
    Checkpoint.objects.filter(name=name).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread with its own database connection; the dict gets its result or error."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as error:
            outcome["error"] = error
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def joined(thread: threading.Thread, outcome: dict[str, Any]) -> Any:
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), "the thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _wait_until_blocked(thread: threading.Thread) -> None:
    """Wait until `thread` waits for a lock (PostgreSQL: a session waits on a lock; SQLite: a moment passed)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:

            def waiting() -> bool:
                cursor.execute(
                    "SELECT COUNT(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return cursor.fetchone()[0] > 0

            wait_for(waiting, "the heir waits on a lock")
    else:
        time.sleep(0.3)
    assert thread.is_alive()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------ exactly once, batches, checkpoint
@pytest.mark.django_db
class TestCatchingUp:
    def test_the_read_model_equals_a_fold_of_the_log_after_many_batches(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 230)
        projection = RecordingLedger()
        passed = ProjectionRunner(projection, batch_size=10).run()
        assert passed == event_store.head_position()
        assert ledger_state("ledger") == expected_ledger("ledger")
        assert projection.batch_sizes == [10] * 23
        assert checkpoint("ledger").position == event_store.head_position()

    def test_batches_are_applied_in_log_order_and_never_exceed_the_batch_size(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        ticks = append_ticks(event_store, 57)
        seen: list[int] = []

        class Ordered(RecordingLedger):
            name = "ledger"

            def handle_batch(self, events: list[RecordedEvent]) -> None:
                seen.extend(event.position for event in events)
                super().handle_batch(events)

        projection = Ordered()
        runner = ProjectionRunner(projection, batch_size=8)
        steps = []
        while step := runner.run_batch():
            steps.append(step)
        assert seen == [t.position for t in ticks]
        assert projection.batch_sizes == [8] * 7 + [1]
        assert sum(steps) == event_store.head_position()
        assert ledger_state("ledger") == expected_ledger("ledger")

    def test_the_checkpoint_moves_past_unwanted_events_up_to_the_head(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 12)
        event_store.append("Noise-1", [NewEvent("NoiseHappened", {}) for _ in range(5)])
        projection = RecordingLedger()
        runner = ProjectionRunner(projection, batch_size=100)
        assert runner.run_batch() == event_store.head_position()
        assert runner.run_batch() == 0  # caught up
        assert checkpoint("ledger").position == event_store.head_position()
        event_store.append("Noise-2", [NewEvent("NoiseHappened", {})])
        assert runner.run_batch() == 1  # nothing wanted, yet the checkpoint follows the head
        assert projection.batch_sizes == [12]
        assert checkpoint("ledger").position == event_store.head_position()
        runner.release()
        assert checkpoint("ledger").lease_owner == ""

    def test_a_run_picks_up_where_the_last_one_stopped(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 20)
        ProjectionRunner(LedgerProjection(), owner="first").run()
        append_ticks(event_store, 31)
        passed = ProjectionRunner(LedgerProjection(), owner="second", batch_size=4).run()
        assert ledger_state("ledger") == expected_ledger("ledger")
        assert passed > 0
        assert checkpoint("ledger").position == event_store.head_position()


# ------------------------------------------------------------------ leases
@pytest.mark.django_db
class TestLease:
    def test_another_owner_gets_nothing_while_the_lease_is_held(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 30)
        holder = ProjectionRunner(LedgerProjection(), owner="holder", batch_size=10)
        other = ProjectionRunner(LedgerProjection(), owner="other", batch_size=10)
        assert holder.run_batch()
        assert other.run_batch() is None
        assert other.run() == 0
        assert checkpoint("ledger").lease_owner == "holder"
        assert holder.run_batch()  # the holder renews and goes on
        holder.release()
        assert other.run() > 0
        assert ledger_state("ledger") == expected_ledger("ledger")

    def test_an_expired_lease_is_taken_over(self, event_store: EventStore, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "PROJECTION_LEASE_SECONDS": 0.3}
        reset_ledger("ledger")
        append_ticks(event_store, 30)
        holder = ProjectionRunner(LedgerProjection(), owner="holder", batch_size=10)
        other = ProjectionRunner(LedgerProjection(), owner="other", batch_size=10)
        assert holder.run_batch()
        assert other.run_batch() is None
        time.sleep(0.4)
        assert other.run_batch()
        assert checkpoint("ledger").lease_owner == "other"
        assert holder.run_batch() is None  # the old holder now waits its turn
        other.run()
        assert ledger_state("ledger") == expected_ledger("ledger")

    def test_batches_after_the_first_go_on_under_the_lease_their_advance_renewed(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 30)
        runner = ProjectionRunner(LedgerProjection(), owner="holder", batch_size=10)
        statements = []
        for _ in range(4):
            with CaptureQueriesContext(connection) as captured:
                runner.run_batch()
            statements.append([query["sql"] for query in captured.captured_queries])
        takes_lease = [any("SET lease_owner" in sql for sql in batch) for batch in statements]
        # Only the first batch takes the lease (an UPDATE, and a commit); each advance renews it.
        assert takes_lease == [True, False, False, False]
        assert ledger_state("ledger") == expected_ledger("ledger")
        assert checkpoint("ledger").lease_owner == "holder"

    def test_a_lease_moved_into_the_past_is_taken_over(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 30)
        holder = ProjectionRunner(LedgerProjection(), owner="holder", batch_size=10)
        assert holder.run_batch()
        expire_lease("ledger")
        assert ProjectionRunner(LedgerProjection(), owner="heir").run() > 0
        assert ledger_state("ledger") == expected_ledger("ledger")
        assert holder.run_batch() == 0  # the lease was released: the holder may run again, caught up


@pytest.mark.django_db(transaction=True)
class TestStalledRunner:
    """A runner that stalls past its lease, while another takes over, cannot advance: its batch rolls back."""

    def test_stalled_between_reading_and_writing(self, event_store: EventStore) -> None:
        reset_ledger("counting_ledger")
        append_ticks(event_store, 40)
        store = StallingStore()
        stalled = ProjectionRunner(CountingLedger(), owner="stalled", store=store, batch_size=25)
        thread, outcome = in_thread(stalled.run_batch)
        assert store.inside.wait(WAIT_SECONDS)
        expire_lease("counting_ledger")
        heir = ProjectionRunner(CountingLedger(), owner="heir", batch_size=25)
        assert heir.run() == event_store.head_position()
        store.go.set()
        assert joined(thread, outcome) is None  # its batch (a double, here) rolled back at the guarded advance
        assert ledger_state("counting_ledger") == expected_ledger("counting_ledger", unique_rows=False)
        assert checkpoint("counting_ledger").position == event_store.head_position()

    def test_a_runner_stalled_inside_its_transaction_is_waited_for_not_overtaken(
        self, event_store: EventStore, settings
    ) -> None:
        """Its transaction holds the checkpoint: even once its lease ran out, the heir waits for it to end."""
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "PROJECTION_LEASE_SECONDS": 0.2}
        reset_ledger("stalling_ledger")
        ticks = append_ticks(event_store, 40)
        projection = StallingLedger()
        stalled = ProjectionRunner(projection, owner="stalled", batch_size=25)
        stalled_thread, stalled_outcome = in_thread(stalled.run_batch)
        assert projection.inside.wait(WAIT_SECONDS)
        time.sleep(0.3)  # its lease runs out while it is inside
        heir = ProjectionRunner(StallingLedger(), owner="heir", batch_size=25)
        heir.projection.inside.set()  # the heir does not stall
        heir_thread, heir_outcome = in_thread(heir.run)
        _wait_until_blocked(heir_thread)
        projection.go.set()
        assert joined(stalled_thread, stalled_outcome) == ticks[24].position
        assert joined(heir_thread, heir_outcome) == event_store.head_position() - ticks[24].position
        assert ledger_state("stalling_ledger") == expected_ledger("stalling_ledger")
        assert checkpoint("stalling_ledger").status == CheckpointStatus.RUNNING

    def test_a_stalled_skip_runner_whose_batch_fails_neither_dead_letters_nor_raises(
        self, event_store: EventStore
    ) -> None:
        """Its batch fails on the rows the heir wrote; the fallback must not dead-letter good events."""

        class SkippingUniqueLedger(LedgerProjection):
            name = "skipping_unique"
            on_error = SKIP

        reset_ledger("skipping_unique")
        append_ticks(event_store, 40)
        store = StallingStore()
        stalled = ProjectionRunner(SkippingUniqueLedger(), owner="stalled", store=store, batch_size=25)
        thread, outcome = in_thread(stalled.run_batch)
        assert store.inside.wait(WAIT_SECONDS)
        expire_lease("skipping_unique")
        assert ProjectionRunner(SkippingUniqueLedger(), owner="heir").run() == event_store.head_position()
        store.go.set()
        assert joined(thread, outcome) is None
        assert not ProjectionDeadLetter.objects.filter(projection="skipping_unique").exists()
        assert ledger_state("skipping_unique") == expected_ledger("skipping_unique")


# ------------------------------------------------------------------ poison events
@pytest.mark.django_db
class TestPoisonEvents:
    def test_stop_fails_visibly_others_keep_up_and_resume_catches_up_exactly(self, event_store: EventStore) -> None:
        poisonable, healthy = PoisonableLedger(), LedgerProjection()
        reset_ledger("poisonable")
        reset_ledger("ledger")
        ticks = append_ticks(event_store, 40, poison_at=23)
        poison = ticks[23]
        with registered(poisonable, healthy):
            ProjectionRunner(poisonable, batch_size=10).run()
            ProjectionRunner(healthy, batch_size=10).run()

            failed = status_of("poisonable")
            assert (failed.status, failed.failed_position) == ("failed", poison.position)
            assert "ValueError" in failed.last_error
            assert f"position {poison.position}" in failed.last_error
            assert failed.lag == 17  # the poison tick and the 16 after it
            assert failed.lease_owner == ""
            assert ledger_state("poisonable") == expected_ledger("poisonable", wanted=ticks[:23])
            assert ProjectionRunner(poisonable).run_batch() is None  # stopped: nothing more until resumed

            other = status_of("ledger")
            assert (other.status, other.lag, other.last_error) == ("running", 0, "")
            assert ledger_state("ledger") == expected_ledger("ledger")

            poisonable.fixed = True
            resume("poisonable")
            resumed = status_of("poisonable")
            assert (resumed.status, resumed.last_error, resumed.failed_position) == ("running", "", None)
            ProjectionRunner(poisonable, batch_size=10).run()
            assert ledger_state("poisonable") == expected_ledger("poisonable")
            assert status_of("poisonable").lag == 0

    def test_skip_dead_letters_the_event_goes_on_and_retry_applies_it_after_the_fix(
        self, event_store: EventStore
    ) -> None:
        skipping = SkippingLedger()
        reset_ledger("skipping")
        ticks = append_ticks(event_store, 40, poison_at=5)
        poison = ticks[5]
        with registered(skipping):
            ProjectionRunner(skipping, batch_size=10).run()
            status = status_of("skipping")
            assert (status.status, status.lag, status.dead_letters) == ("running", 0, 1)
            assert ledger_state("skipping") == expected_ledger("skipping", wanted=[t for t in ticks if t != poison])
            (letter,) = ProjectionDeadLetter.objects.filter(projection="skipping")
            assert (letter.position, letter.event_id, letter.event_type) == (poison.position, poison.event_id, TICK)
            assert "ValueError" in letter.error

            assert retry_dead_letters("skipping") == (0, 1)  # not fixed yet: it stays
            assert status_of("skipping").dead_letters == 1

            skipping.fixed = True
            assert retry_dead_letters("skipping") == (1, 0)
            assert ledger_state("skipping") == expected_ledger("skipping")
            assert status_of("skipping").dead_letters == 0
            assert ProjectionDeadLetter.objects.get(pk=letter.pk).retried_at is not None
            assert retry_dead_letters("skipping") == (0, 0)  # applied once, never again
            assert ledger_state("skipping") == expected_ledger("skipping")

    def test_a_failing_batch_falls_back_to_one_by_one_to_find_the_poison_event(self, event_store: EventStore) -> None:
        projection = BatchPoisonableLedger()
        reset_ledger("batch_poisonable")
        ticks = append_ticks(event_store, 120, poison_at=69)
        with registered(projection):
            ProjectionRunner(projection, batch_size=50).run()
            assert projection.batches == [(50, True), (50, False)] + [(1, True)] * 19 + [(1, False)]
            failed = status_of("batch_poisonable")
            assert (failed.status, failed.failed_position) == ("failed", ticks[69].position)
            assert ledger_state("batch_poisonable") == expected_ledger("batch_poisonable", wanted=ticks[:69])

            projection.fixed = True
            projection.batches.clear()
            resume("batch_poisonable")
            ProjectionRunner(projection, batch_size=50).run()
            assert projection.batches == [(50, True), (1, True)]  # batch mode again once past the poison
            assert ledger_state("batch_poisonable") == expected_ledger("batch_poisonable")

    def test_a_clean_log_is_applied_in_whole_batches(self, event_store: EventStore) -> None:
        projection = BatchPoisonableLedger()
        reset_ledger("batch_poisonable")
        append_ticks(event_store, 120)
        ProjectionRunner(projection, batch_size=50).run()
        assert projection.batches == [(50, True), (50, True), (20, True)]
        assert ledger_state("batch_poisonable") == expected_ledger("batch_poisonable")


@pytest.mark.django_db(transaction=True)
def test_a_transient_database_error_is_retried_and_does_not_fail_the_projection(event_store: EventStore) -> None:
    projection = FlakyLedger(failures=2)
    reset_ledger("flaky_ledger")
    append_ticks(event_store, 30)
    ProjectionRunner(projection, batch_size=100).run()
    assert projection.attempts == 3
    assert ledger_state("flaky_ledger") == expected_ledger("flaky_ledger")
    saved = checkpoint("flaky_ledger")
    assert (saved.status, saved.last_error, saved.position) == ("running", "", event_store.head_position())


# ------------------------------------------------------------------ rebuild
@pytest.mark.django_db
class TestRebuild:
    def test_rebuild_clears_and_replays_exactly(self, event_store: EventStore) -> None:
        projection = LedgerProjection()
        reset_ledger("ledger")
        append_ticks(event_store, 45)
        with registered(projection):
            ProjectionRunner(projection).run()
            # A read model gone wrong: three events counted twice, some rows lost.
            apply_ledger("ledger", event_store.read_all(event_types=[TICK], limit=3), unique_rows=False)
            OrderSummary.objects.filter(
                pk__in=list(OrderSummary.objects.filter(customer_id="ledger").values_list("pk", flat=True)[:5])
            ).delete()
            assert ledger_state("ledger") != expected_ledger("ledger")
            progress: list[tuple[int, int]] = []
            replayed = rebuild("ledger", batch_size=7, progress=lambda done, total: progress.append((done, total)))
            head = event_store.head_position()
            assert replayed == head
            assert ledger_state("ledger") == expected_ledger("ledger")
            assert [done for done, _ in progress] == sorted({done for done, _ in progress})
            assert progress[-1] == (head, head)
            saved = checkpoint("ledger")
            assert (saved.status, saved.position, saved.lease_owner) == ("running", head, "")

    def test_rebuild_brings_a_failed_projection_back_to_running(self, event_store: EventStore) -> None:
        projection = PoisonableLedger()
        reset_ledger("poisonable")
        append_ticks(event_store, 20, poison_at=4)
        with registered(projection):
            ProjectionRunner(projection).run()
            assert status_of("poisonable").status == "failed"
            projection.fixed = True
            rebuild("poisonable")
            status = status_of("poisonable")
            assert (status.status, status.lag, status.last_error, status.failed_position) == ("running", 0, "", None)
            assert ledger_state("poisonable") == expected_ledger("poisonable")

    def test_runners_leave_a_rebuilding_projection_alone(self, event_store: EventStore) -> None:
        reset_ledger("ledger")
        append_ticks(event_store, 10)
        Checkpoint.objects.create(name="ledger", status=CheckpointStatus.REBUILDING)
        assert ProjectionRunner(LedgerProjection()).run_batch() is None
        assert ledger_state("ledger").applied == 0


# ------------------------------------------------------------------ concurrency
def _runner_loop(
    owner: str, writers_done: threading.Event, batches: dict[str, int], handed_over: threading.Event
) -> None:
    """Take turns at the ledger (short runs, lease released in between) until the writers are done and it caught up."""
    rng = random.Random(owner)
    store = EventStore()

    class Counted(LedgerProjection):
        name = "ledger"

        def handle_batch(self, events: list[RecordedEvent]) -> None:
            super().handle_batch(events)
            batches[owner] += 1

    runner = ProjectionRunner(Counted(), owner=owner, batch_size=7)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        finished = writers_done.is_set()
        runner.run(seconds=rng.uniform(0.01, 0.15))
        if finished and checkpoint("ledger").position == store.head_position():
            return
        if batches[owner] and not all(batches.values()):
            # Hand over: once this runner has applied batches, it waits (lease released)
            # until the other has applied some too, so the lease really changes hands.
            handed_over.wait(timeout=5)
        if all(batches.values()):
            handed_over.set()
        time.sleep(rng.uniform(0.001, 0.03))
    raise AssertionError(f"{owner} did not see the ledger catch up within {WAIT_SECONDS} s")


@pytest.mark.django_db(transaction=True)
def test_two_runners_and_four_writer_processes_apply_every_event_exactly_once(
    event_store: EventStore, worker_env: dict[str, str], tmp_path, settings
) -> None:
    """Writers append (some transactions roll back, leaving holes) while two runners pass the lease around."""
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "PROJECTION_LEASE_SECONDS": 2}
    reset_ledger("ledger")
    writers = [
        subprocess.Popen(
            [*WORKER, "append", "--count", "150", "--seed", str(n), "--barrier", str(tmp_path)],
            cwd=REPO_ROOT,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    writers_done = threading.Event()
    batches = {"runner-a": 0, "runner-b": 0}
    handed_over = threading.Event()
    with killed_on_exit(writers):
        runners = [
            in_thread(lambda owner=owner: _runner_loop(owner, writers_done, batches, handed_over)) for owner in batches
        ]
        release(tmp_path, writers)
        results = results_of(writers, timeout=WAIT_SECONDS)
    writers_done.set()
    for thread, outcome in runners:
        joined(thread, outcome)

    committed = {event_id for result in results for event_id in result["committed"]}
    rolled_back = {event_id for result in results for event_id in result["rolled_back"]}
    logged = {str(e.event_id) for e in event_store.iter_all(event_types=[TICK], categories=[CATEGORY])}
    assert (len(committed), logged, rolled_back & logged) == (600, committed, set())
    assert ledger_state("ledger") == expected_ledger("ledger")
    saved = checkpoint("ledger")
    assert (saved.status, saved.position, saved.last_error) == ("running", event_store.head_position(), "")
    assert not ProjectionDeadLetter.objects.exists()
    assert min(batches.values()) > 0, f"both runners should have applied batches: {batches}"


@pytest.mark.django_db(transaction=True)
def test_a_runner_killed_mid_batch_loses_nothing_and_doubles_nothing(
    event_store: EventStore, worker_env: dict[str, str]
) -> None:
    reset_ledger("ledger")
    ticks = append_ticks(event_store, 100)
    worker = subprocess.Popen(
        [*WORKER, "run", "ledger-stalling", "--batch-size", "10", "--owner", "doomed"],
        cwd=REPO_ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with killed_on_exit([worker]):
        assert json.loads(worker.stdout.readline()) == {"owner": "doomed"}
        line = worker.stdout.readline()
        assert line, f"the worker ended before stalling:\n{worker.stderr.read()}"
        stalled = json.loads(line)
        assert (stalled["first"], stalled["last"]) == (ticks[20].position, ticks[29].position)
        saved = checkpoint("ledger")
        assert (saved.lease_owner, saved.position) == ("doomed", ticks[19].position)
        worker.send_signal(signal.SIGKILL)
        worker.wait(WAIT_SECONDS)

    assert ledger_state("ledger") == expected_ledger("ledger", wanted=ticks[:20])  # its third batch rolled back
    heir = ProjectionRunner(LedgerProjection(), owner="heir", batch_size=10)
    assert heir.run_batch() is None  # the dead worker's lease has not run out yet
    expire_lease("ledger")
    assert heir.run() == event_store.head_position() - ticks[19].position
    assert ledger_state("ledger") == expected_ledger("ledger")
    saved = checkpoint("ledger")
    assert (saved.status, saved.position, saved.lease_owner) == ("running", event_store.head_position(), "")
