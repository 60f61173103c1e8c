"""Management commands of projections: rebuild_projection, run_projections, eventsourcing_status."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from eventsourcing_app.models import Checkpoint, CheckpointStatus
from eventsourcing_app.projections import STOP, Projection, ProjectionRunner, projection_registry
from eventsourcing_app.store import DomainEvent, EventStore, RecordedEvent
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.events import StockAdded
from project.shop.models import InventoryLevel
from tests.conftest import REPO_ROOT


@dataclass(frozen=True)
class CmdNoteAdded(DomainEvent):
    """The test projection's event; a negative value is a poison event."""

    value: int


# The test projection's read model, and the size of each batch it was given.
NOTES: list[int] = []
BATCHES: list[int] = []


class NotesProjection(Projection):
    """Records note values in memory; stops on a negative one."""

    name = "cmd_notes"
    event_types = ("CmdNoteAdded",)
    on_error = STOP

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        BATCHES.append(len(events))
        for event in events:
            if event.data.value < 0:
                raise ValueError(f"cannot note {event.data.value}")
        NOTES.extend(event.data.value for event in events)

    def clear(self) -> None:
        NOTES.clear()
        BATCHES.clear()


@pytest.fixture
def notes() -> NotesProjection:
    """The notes projection, registered for the test only (other tests iterate every projection)."""
    projection = NotesProjection()
    projection_registry.register(projection.name, projection)
    NOTES.clear()
    BATCHES.clear()
    yield projection
    projection_registry.unregister(projection.name)


@pytest.fixture
def no_nudges(settings) -> None:
    """No on-commit runs of async projections: appends pile up as a backlog, as with no worker running."""
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMIT_HOOKS": []}


class FakeTerminal(io.StringIO):
    """A stdout that says it is a terminal, to see the progress bar."""

    def isatty(self) -> bool:
        return True


def add_stock(store: EventStore, quantities: dict[str, list[int]]) -> list[RecordedEvent]:
    recorded = []
    for sku, amounts in quantities.items():
        recorded += store.append(f"Inventory-{sku}", [StockAdded(sku=sku, quantity=q) for q in amounts]).events
    return recorded


def folded_inventory(store: EventStore) -> dict[str, int]:
    """The inventory read model as a fold of the whole log (only StockAdded in these tests)."""
    totals: Counter[str] = Counter()
    for event in store.iter_all(event_types=["StockAdded"]):
        totals[event.data.sku] += event.data.quantity
    return dict(totals)


def inventory() -> dict[str, int]:
    return dict(InventoryLevel.objects.values_list("sku", "available"))


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def manage(worker_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# ---------------------------------------------------------------- rebuild_projection
@pytest.mark.django_db
class TestRebuildProjection:
    def test_clears_the_read_model_and_replays_exactly(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [1, 2, 3], "SKU-B": [10]})
        InventoryLevel.objects.create(sku="STALE", available=99)
        InventoryLevel.objects.create(sku="SKU-A", available=1000)

        out, _ = run("rebuild_projection", "inventory_levels", "--yes")

        assert inventory() == folded_inventory(event_store) == {"SKU-A": 6, "SKU-B": 10}
        checkpoint = Checkpoint.objects.get(name="inventory_levels")
        assert (checkpoint.position, checkpoint.status, checkpoint.lease_owner) == (
            event_store.head_position(),
            CheckpointStatus.RUNNING,
            "",
        )
        assert f"inventory_levels: {event_store.head_position()} events replayed" in out  # positions passed
        assert "events/s" in out

    def test_all_rebuilds_every_async_projection(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(1), CmdNoteAdded(2)])
        add_stock(event_store, {"SKU-A": [5]})
        NOTES.append(42)

        out, _ = run("rebuild_projection", "--all", "--yes")

        assert NOTES == [1, 2]
        assert inventory() == {"SKU-A": 5}
        for name in ("cmd_notes", "inventory_levels", "order_summary"):
            assert f"{name}: {event_store.head_position()} events replayed" in out

    def test_an_unknown_name_lists_the_known_ones(self, notes: NotesProjection) -> None:
        with pytest.raises(
            CommandError, match=r"Unknown projection 'nope'.*cmd_notes.*inventory_levels.*order_summary"
        ):
            run("rebuild_projection", "nope", "--yes")

    def test_needs_names_or_all(self) -> None:
        with pytest.raises(CommandError, match="--all"):
            run("rebuild_projection", "--yes")
        with pytest.raises(CommandError, match="not both"):
            run("rebuild_projection", "order_summary", "--all", "--yes")

    def test_batch_size(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(n) for n in range(10)])

        run("rebuild_projection", "cmd_notes", "--batch-size", "3", "--yes")

        assert BATCHES == [3, 3, 3, 1]
        assert NOTES == list(range(10))

    def test_a_bad_batch_size_is_refused(self) -> None:
        with pytest.raises(CommandError, match="--batch-size"):
            run("rebuild_projection", "order_summary", "--batch-size", "0", "--yes")

    def test_shows_a_progress_bar_on_a_terminal_only(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(n) for n in range(4)])
        terminal, piped, quiet = FakeTerminal(), io.StringIO(), FakeTerminal()

        call_command("rebuild_projection", "cmd_notes", "--batch-size", "2", "--yes", stdout=terminal)
        call_command("rebuild_projection", "cmd_notes", "--batch-size", "2", "--yes", stdout=piped)
        call_command("rebuild_projection", "cmd_notes", "--yes", "--no-progress", stdout=quiet)

        head = event_store.head_position()
        assert f"{head}/{head}" in terminal.getvalue()
        assert "events/s]" in terminal.getvalue()
        for output in (piped.getvalue(), quiet.getvalue()):
            assert "events/s]" not in output
            assert "events replayed" in output

    def test_without_yes_and_without_a_terminal_it_refuses(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [5]})
        InventoryLevel.objects.create(sku="KEEP", available=1)

        with pytest.raises(CommandError, match="--yes"):
            run("rebuild_projection", "inventory_levels")

        assert inventory() == {"KEEP": 1}

    @pytest.mark.parametrize(("answer", "rebuilt"), [("y", True), ("n", False), ("", False)])
    def test_asks_on_a_terminal(self, monkeypatch, event_store: EventStore, answer: str, rebuilt: bool) -> None:
        add_stock(event_store, {"SKU-A": [5]})
        questions = []
        monkeypatch.setattr("eventsourcing_app.management.commands._base._stdin_is_terminal", lambda: True)
        monkeypatch.setattr("builtins.input", lambda question: questions.append(question) or answer)

        if rebuilt:
            run("rebuild_projection", "inventory_levels")
        else:
            with pytest.raises(CommandError, match="Not confirmed"):
                run("rebuild_projection", "inventory_levels")

        assert questions == ["This empties and replays the read model of inventory_levels. Continue? [y/N] "]
        assert inventory() == ({"SKU-A": 5} if rebuilt else {})

    def test_a_poison_event_fails_the_command(self, event_store: EventStore, notes: NotesProjection) -> None:
        recorded = event_store.append("Note-1", [CmdNoteAdded(1), CmdNoteAdded(-1), CmdNoteAdded(2)]).events

        with pytest.raises(CommandError, match="poison event: cmd_notes"):
            call_command(
                "rebuild_projection", "cmd_notes", "--yes", stdout=io.StringIO(), stderr=(err := io.StringIO())
            )

        poison = recorded[1].position
        assert f"cmd_notes: failed at position {poison}: ValueError: cannot note -1" in err.getvalue()
        checkpoint = Checkpoint.objects.get(name="cmd_notes")
        assert (checkpoint.status, checkpoint.failed_position, checkpoint.position) == ("failed", poison, poison - 1)


def test_an_unknown_name_exits_1_without_a_traceback(worker_env: dict[str, str]) -> None:
    result = manage(worker_env, "rebuild_projection", "nope", "--yes")

    assert result.returncode == 1
    assert re.search(r"Unknown projection 'nope'\. Known projections: .*inventory_levels.*order_summary", result.stderr)
    assert "Traceback" not in result.stderr


def test_a_rebuild_beside_busy_writers_ends_exact_and_caught_up(
    transactional_db: None, event_store: EventStore, settings
) -> None:
    """Two writers append during the whole rebuild, and their commits run the projection too (Celery is eager).

    Nothing is lost or applied twice, and the runners and the rebuild never deadlock on the read model.
    """
    # Short eager runs, so a writer thread does not keep catching up with the other one for long.
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "PROJECTION_TASK_SECONDS": 0.2}
    add_stock(event_store, {f"SKU-{n}": [1] * 300 for n in range(5)})
    stop = threading.Event()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                event_store.append(f"Inventory-W{worker}", [StockAdded(sku=f"W{worker}", quantity=n % 7 + 1)])
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    writers = [threading.Thread(target=write, args=(worker,)) for worker in range(2)]
    for writer in writers:
        writer.start()
    try:
        time.sleep(0.2)
        head_before = event_store.head_position()
        run("rebuild_projection", "inventory_levels", "--batch-size", "50", "--yes")
        head_after = event_store.head_position()
    finally:
        stop.set()
        for writer in writers:
            writer.join()

    assert not errors
    assert head_after > head_before  # the writers appended while the rebuild ran
    statuses = {status.name: status for status in wait_until_caught_up(run=True)}
    assert statuses["inventory_levels"].lag == 0
    assert inventory() == folded_inventory(event_store)


# ---------------------------------------------------------------- run_projections
@pytest.mark.django_db
class TestRunProjectionsOnce:
    def test_catches_up_every_async_projection(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(n) for n in range(7)])
        add_stock(event_store, {"SKU-A": [2, 3]})

        out, _ = run("run_projections", "--once", "--batch-size", "3")

        assert NOTES == list(range(7))
        assert inventory() == {"SKU-A": 5}
        head = event_store.head_position()
        for checkpoint in Checkpoint.objects.filter(name__in=["cmd_notes", "inventory_levels"]):
            assert (checkpoint.position, checkpoint.lease_owner) == (head, "")
        assert "Caught up" in out

    def test_only_the_named_projections(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(1)])
        add_stock(event_store, {"SKU-A": [2]})

        run("run_projections", "--once", "--projection", "cmd_notes")

        assert NOTES == [1]
        assert inventory() == {}

    def test_an_unknown_projection_is_refused(self) -> None:
        with pytest.raises(CommandError, match=r"Known projections: .*inventory_levels.*order_summary"):
            run("run_projections", "--once", "--projection", "nope")

    def test_reports_a_failed_projection(self, event_store: EventStore, notes: NotesProjection) -> None:
        recorded = event_store.append("Note-1", [CmdNoteAdded(-5)]).events

        _, err = run("run_projections", "--once", "--projection", "cmd_notes")

        assert f"cmd_notes: failed at position {recorded[0].position}" in err

    def test_a_runner_is_kept_across_batches(self, monkeypatch, event_store: EventStore, notes) -> None:
        """One runner per projection: every batch runs under the same lease owner (renewed, not retaken)."""
        owners = []
        original = ProjectionRunner.run_batch

        def spy(self: ProjectionRunner) -> int | None:
            owners.append(self.owner)
            return original(self)

        monkeypatch.setattr(ProjectionRunner, "run_batch", spy)
        event_store.append("Note-1", [CmdNoteAdded(n) for n in range(5)])

        run("run_projections", "--once", "--projection", "cmd_notes", "--batch-size", "2")

        assert len(owners) == 4  # 2 + 2 + 1, then one that finds nothing to do
        assert len(set(owners)) == 1


def test_sigterm_stops_after_the_current_batch(
    worker_env: dict[str, str], event_store: EventStore, no_nudges: None
) -> None:
    """A worker busy on a backlog exits 0 on SIGTERM: whole batches applied, exactly once, and its lease freed."""
    batch_size = 10
    recorded = []
    for chunk in range(20):
        recorded += add_stock(event_store, {f"SKU-{chunk}": [1] * 1000})
    start = recorded[0].position - 1
    args = ["run_projections", "--projection", "inventory_levels", "--batch-size", str(batch_size), "--interval", "0.1"]
    worker = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while Checkpoint.objects.filter(name="inventory_levels", position__gt=start).count() == 0:
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.02)
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "Stopped: the leases are released." in out
    checkpoint = Checkpoint.objects.get(name="inventory_levels")
    applied = checkpoint.position - start
    assert 0 < applied < len(recorded)  # it stopped in the middle of the backlog
    assert applied % batch_size == 0
    assert checkpoint.lease_owner == ""
    assert sum(inventory().values()) == applied


# ---------------------------------------------------------------- eventsourcing_status
@pytest.mark.django_db
class TestEventsourcingStatus:
    def test_prints_a_table_of_the_async_projections(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [1, 1]})

        out, _ = run("eventsourcing_status")

        lines = out.split("\n\n")[0].splitlines()  # the first section: the projections
        assert lines[0] == "Async projections:"
        assert lines[1].split() == [
            "name",
            "status",
            "position",
            "lag",
            "dead_letters",
            "failed_position",
            "last_error",
        ]
        rows = {line.split()[0]: line.split()[1:] for line in lines[3:]}
        assert rows["inventory_levels"] == ["running", "0", "2", "0", "-"]
        assert rows["order_summary"] == ["running", "0", "0", "0", "-"]

    def test_json(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [1, 1]})

        out, _ = run("eventsourcing_status", "--json")

        report = json.loads(out)
        assert report["problems"] == []
        rows = {row["name"]: row for row in report["projections"]}
        assert {"inventory_levels", "order_summary"} <= set(rows)
        assert rows["inventory_levels"] | {"updated_at": None} == {
            "name": "inventory_levels",
            "status": "running",
            "position": 0,
            "head": event_store.head_position(),
            "lag": 2,
            "dead_letters": 0,
            "last_error": "",
            "failed_position": None,
            "updated_at": None,
        }

    def test_a_failed_projection_exits_1_and_says_so(self, event_store: EventStore, notes: NotesProjection) -> None:
        recorded = event_store.append("Note-1", [CmdNoteAdded(-1)]).events
        ProjectionRunner(notes).run_batch()
        out = io.StringIO()

        with pytest.raises(CommandError, match=rf"cmd_notes failed at position {recorded[0].position}: ValueError"):
            call_command("eventsourcing_status", stdout=out)

        assert "cmd_notes" in out.getvalue()
        assert "failed" in out.getvalue()

    def test_long_errors_are_cut_in_the_table_and_whole_in_json(self, notes: NotesProjection) -> None:
        error = "ValueError: " + "x" * 200
        Checkpoint.objects.create(name="cmd_notes", status=CheckpointStatus.FAILED, last_error=error, failed_position=3)

        with pytest.raises(CommandError):
            call_command("eventsourcing_status", stdout=(text := io.StringIO()))
        with pytest.raises(CommandError):
            call_command("eventsourcing_status", "--json", stdout=(machine := io.StringIO()))

        assert error not in text.getvalue()
        assert "ValueError: xxx" in text.getvalue()
        assert "…" in text.getvalue()
        report = json.loads(machine.getvalue())
        assert {row["name"]: row["last_error"] for row in report["projections"]}["cmd_notes"] == error
        assert report["problems"] == [f"Projection cmd_notes failed at position 3: {error}"]

    def test_wait_only_watches_and_times_out(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [1]})

        with pytest.raises(CommandError, match=r"not caught up after 0\.2 s: inventory_levels \(lag 1, running\)"):
            run("eventsourcing_status", "--wait", "--timeout", "0.2")

        assert inventory() == {}

    def test_wait_with_run_catches_up(self, event_store: EventStore) -> None:
        add_stock(event_store, {"SKU-A": [1, 2]})

        out, _ = run("eventsourcing_status", "--wait", "--run", "--json")

        rows = json.loads(out)["projections"]
        assert {"inventory_levels", "order_summary"} <= {row["name"] for row in rows}
        assert {row["lag"] for row in rows} == {0}
        assert inventory() == {"SKU-A": 3}

    def test_wait_returns_at_once_when_caught_up(self) -> None:
        out, _ = run("eventsourcing_status", "--wait", "--timeout", "0")

        assert "inventory_levels" in out

    def test_wait_stops_on_a_failure(self, event_store: EventStore, notes: NotesProjection) -> None:
        event_store.append("Note-1", [CmdNoteAdded(-1)])

        with pytest.raises(CommandError, match="cmd_notes failed") as raised:
            run("eventsourcing_status", "--run", "--timeout", "30")

        assert "not caught up" not in str(raised.value)


def test_status_exit_code_of_a_failed_projection(worker_env: dict[str, str]) -> None:
    Checkpoint.objects.create(
        name="order_summary", status=CheckpointStatus.FAILED, failed_position=7, last_error="KeyError: 'x'"
    )

    result = manage(worker_env, "eventsourcing_status")

    assert result.returncode == 1
    assert "Projection order_summary failed at position 7: KeyError: 'x'" in result.stderr
    assert "Traceback" not in result.stderr
    assert "order_summary" in result.stdout
