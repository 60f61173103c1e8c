"""Management commands of sagas: run_sagas (catch up, timeouts, signals, bad input) and eventsourcing_status."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from eventsourcing_app.aggregates import Repository
from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import Checkpoint, CheckpointStatus, SagaState, SagaStatus
from eventsourcing_app.projections import ProjectionRunner
from eventsourcing_app.sagas import Saga, SagaInstance, checkpoint_name, on, saga_registry
from eventsourcing_app.store import EventStore, RecordedEvent
from project.shop.aggregates import Inventory, Order
from project.shop.commands import AddStock, CancelOrder, PlaceOrder
from tests.conftest import REPO_ROOT

SHOP_SAGA = "OrderFulfillment"


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


def place_order(sku: str, quantity: int, unit_price: str = "10.00") -> str:
    items = [{"sku": sku, "quantity": quantity, "unit_price": unit_price}]
    return dispatch(PlaceOrder(customer_id="customer-1", items=items)).aggregate_id


def order_status(order_id: str) -> str:
    return Repository(Order).load(order_id).status


def saga_of(order_id: str) -> SagaState:
    return SagaState.objects.get(saga_type=SHOP_SAGA, correlation_id=order_id)


def event_counts(store: EventStore, order_id: str) -> Counter[str]:
    """Events of each type that name this order, wherever they were appended."""
    return Counter(
        event.event_type for event in store.iter_all() if str(getattr(event.data, "order_id", "")) == order_id
    )


class PaymentWatch(Saga):
    """Gives every order no time at all: its timeout fires at the next chance and cancels the order."""

    name = "SagaOpsPaymentWatch"
    starts_with = ("OrderPlaced",)
    correlation_field = "order_id"

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> None:
        saga.compensate_with("place_order", CancelOrder(order_id=event.data.order_id, reason="not paid in time"))
        saga.set_deadline(0)


class BrokenWatch(PaymentWatch):
    """The same, with a bug in its timeout."""

    name = "SagaOpsBrokenWatch"

    def on_timeout(self, saga: SagaInstance) -> None:
        raise RuntimeError("timeout bug")


@pytest.fixture
def broken_watch() -> BrokenWatch:
    saga = BrokenWatch()
    saga_registry.register(saga.name, saga)
    yield saga
    saga_registry.unregister(saga.name)


@pytest.fixture
def payment_watch() -> PaymentWatch:
    saga = PaymentWatch()
    saga_registry.register(saga.name, saga)
    yield saga
    saga_registry.unregister(saga.name)


@pytest.fixture
def stock() -> None:
    dispatch(AddStock(sku="KETTLE", quantity=5))


# ---------------------------------------------------------------- run_sagas --once
@pytest.mark.django_db
class TestRunSagasOnce:
    def test_moves_the_shop_saga_on_to_each_outcome(self, without_sagas, settings, stock, event_store) -> None:
        settings.SHOP_PAYMENT_LIMIT = "100.00"
        confirmed = place_order("KETTLE", 2)
        short = place_order("KETTLE", 50)
        declined = place_order("KETTLE", 1, unit_price="500.00")
        assert not SagaState.objects.exists()  # nothing ran them yet

        out, err = run("run_sagas", "--once")

        assert (order_status(confirmed), order_status(short), order_status(declined)) == (
            "confirmed",
            "cancelled",
            "cancelled",
        )
        assert saga_of(confirmed).status == SagaStatus.COMPLETED
        assert saga_of(short).status == SagaStatus.COMPENSATED
        assert saga_of(declined).status == SagaStatus.COMPENSATED
        # The declined order's reservation was released; the confirmed one keeps its 2 units.
        inventory = Repository(Inventory).load("KETTLE")
        assert (inventory.available, inventory.reserved) == (3, 2)
        checkpoint = Checkpoint.objects.get(name=checkpoint_name(SHOP_SAGA))
        assert (checkpoint.position, checkpoint.lease_owner) == (event_store.head_position(), "")
        assert "Caught up" in out
        assert "Timeouts fired: 0." in out
        assert err == ""

    def test_a_second_run_changes_nothing(self, without_sagas, stock, event_store) -> None:
        order_id = place_order("KETTLE", 1)
        run("run_sagas", "--once")
        head, version = event_store.head_position(), saga_of(order_id).version

        out, _ = run("run_sagas", "--once")

        assert (event_store.head_position(), saga_of(order_id).version) == (head, version)
        assert "Caught up: 0 log positions passed." in out

    def test_batch_size_does_not_change_the_outcome(self, without_sagas, stock, event_store) -> None:
        orders = [place_order("KETTLE", 1) for _ in range(3)]

        run("run_sagas", "--once", "--batch-size", "1")

        assert [order_status(order_id) for order_id in orders] == ["confirmed"] * 3
        for order_id in orders:
            assert event_counts(event_store, order_id)["OrderConfirmed"] == 1

    def test_only_the_named_sagas(self, without_sagas, stock, payment_watch: PaymentWatch) -> None:
        order_id = place_order("KETTLE", 1)

        run("run_sagas", "--once", "--saga", SHOP_SAGA, "--saga", SHOP_SAGA)

        assert order_status(order_id) == "confirmed"
        assert not SagaState.objects.filter(saga_type=payment_watch.name).exists()
        assert not Checkpoint.objects.filter(name=checkpoint_name(payment_watch.name)).exists()

    def test_fires_due_timeouts_and_catches_up_with_their_commands(
        self, without_sagas, stock, payment_watch: PaymentWatch, event_store: EventStore
    ) -> None:
        order_id = place_order("KETTLE", 1)

        out, _ = run("run_sagas", "--once", "--saga", payment_watch.name)

        assert "Timeouts fired: 1." in out
        assert order_status(order_id) == "cancelled"
        state = SagaState.objects.get(saga_type=payment_watch.name, correlation_id=order_id)
        assert (state.status, state.deadline) == (SagaStatus.COMPENSATED, None)
        assert [entry["kind"] for entry in state.history] == [
            "event",
            "timeout",
            "failed",
            "compensated",
            "status",
        ]
        # The cancellation the timeout dispatched was read in the same run: the checkpoint is at the head.
        assert Checkpoint.objects.get(name=checkpoint_name(payment_watch.name)).position == event_store.head_position()

        out, _ = run("run_sagas", "--once", "--saga", payment_watch.name)

        assert "Timeouts fired: 0." in out

    def test_a_failing_timeout_is_reported_and_the_other_sagas_go_on(
        self, without_sagas, stock, payment_watch: PaymentWatch, broken_watch: BrokenWatch
    ) -> None:
        order_id = place_order("KETTLE", 1)

        out, err = run("run_sagas", "--once", "--saga", broken_watch.name, "--saga", payment_watch.name)

        assert "Timeouts fired: 1." in out
        assert "saga:SagaOpsBrokenWatch: a timeout failed: RuntimeError('timeout bug')" in err
        assert order_status(order_id) == "cancelled"  # by the healthy watch
        broken = SagaState.objects.get(saga_type=broken_watch.name, correlation_id=order_id)
        assert (broken.status, broken.deadline is not None) == (SagaStatus.RUNNING, True)  # rolled back, tried later

    def test_a_timeout_that_keeps_failing_is_tried_less_and_less_often(
        self, without_sagas, stock, broken_watch: BrokenWatch
    ) -> None:
        order_id = place_order("KETTLE", 1)
        manager = saga_registry.manager(broken_watch.name)
        run("run_sagas", "--once", "--saga", broken_watch.name)  # handles OrderPlaced; its timeout fails once
        state = SagaState.objects.get(saga_type=broken_watch.name, correlation_id=order_id)
        waits = []
        for _ in range(8):
            with pytest.raises(RuntimeError, match="timeout bug"):
                manager.fire_timeouts(now=state.deadline)
            fired_at, state = state.deadline, SagaState.objects.get(pk=state.pk)
            waits.append((state.deadline - fired_at).total_seconds() / 60)

        assert waits == [2, 4, 8, 16, 32, 60, 60, 60]  # minutes; the first wait, after run_sagas, was 1
        assert [entry["kind"] for entry in state.history] == ["event", "timeout_error"]  # one entry for the run
        assert {key: state.history[-1][key] for key in ("failures", "error")} == {
            "failures": 9,
            "error": "RuntimeError('timeout bug')",
        }
        assert (state.status, state.last_error) == (SagaStatus.RUNNING, "timeout failed: RuntimeError('timeout bug')")

    def test_a_timeout_failing_for_weeks_waits_an_hour_and_after_other_news_a_minute_again(
        self, without_sagas, stock, broken_watch: BrokenWatch
    ) -> None:
        order_id = place_order("KETTLE", 1)
        manager = saga_registry.manager(broken_watch.name)
        run("run_sagas", "--once", "--saga", broken_watch.name)
        state = SagaState.objects.get(saga_type=broken_watch.name, correlation_id=order_id)
        stuck = {**state.history[-1], "failures": 700}
        SagaState.objects.filter(pk=state.pk).update(history=[*state.history[:-1], stuck])

        with pytest.raises(RuntimeError):
            manager.fire_timeouts(now=state.deadline)
        after_weeks = SagaState.objects.get(pk=state.pk)
        news = {"at": "2026-01-01T00:00:00+00:00", "kind": "event", "event_type": "OrderPlaced"}
        SagaState.objects.filter(pk=state.pk).update(history=[*after_weeks.history, news])
        with pytest.raises(RuntimeError):
            manager.fire_timeouts(now=after_weeks.deadline)
        after_news = SagaState.objects.get(pk=state.pk)

        assert (after_weeks.deadline - state.deadline, after_weeks.history[-1]["failures"]) == (timedelta(hours=1), 701)
        assert (after_news.deadline - after_weeks.deadline, after_news.history[-1]["failures"]) == (
            timedelta(minutes=1),
            1,
        )

    def test_an_event_already_in_the_log_beats_the_deadline_it_met(self, without_sagas, stock, settings) -> None:
        """Events are handled before timeouts fire: a payment authorised in time is not undone by a slow worker."""
        order_id = place_order("KETTLE", 1)
        runner = ProjectionRunner(saga_registry.manager(SHOP_SAGA), batch_size=1)
        runner.run_batch()  # OrderPlaced: stock reserved
        runner.run_batch()  # StockReserved: payment asked for, deadline set; PaymentAuthorised waits in the log
        runner.release()
        state = saga_of(order_id)
        assert (state.status, state.current_step) == (SagaStatus.RUNNING, "authorise_payment")
        SagaState.objects.filter(pk=state.pk).update(deadline="2000-01-01T00:00:00Z")

        out, _ = run("run_sagas", "--once")

        assert "Timeouts fired: 0." in out
        assert saga_of(order_id).status == SagaStatus.COMPLETED
        assert order_status(order_id) == "confirmed"

    def test_reports_a_stopped_saga_manager(self, without_sagas, stock, monkeypatch) -> None:
        place_order("KETTLE", 1)
        manager = saga_registry.manager(SHOP_SAGA)

        def broken(events: list[RecordedEvent]) -> None:
            raise RuntimeError("saga bug")

        monkeypatch.setattr(manager, "handle_batch", broken)

        _, err = run("run_sagas", "--once")

        assert re.search(r"saga:OrderFulfillment: failed at position \d+: RuntimeError: saga bug", err)
        assert not SagaState.objects.exists()


@pytest.mark.django_db
class TestRunSagasRefuses:
    def test_an_unknown_saga_lists_the_known_ones(self, payment_watch: PaymentWatch) -> None:
        with pytest.raises(CommandError, match=r"Unknown saga 'nope'\. Known sagas: OrderFulfillment, SagaOpsPayment"):
            run("run_sagas", "--once", "--saga", "nope")

    @pytest.mark.parametrize(
        "args", [("--interval", "-1"), ("--batch-size", "0"), ("--batch-size", "-5")], ids=" ".join
    )
    def test_bad_numbers(self, args: tuple[str, str]) -> None:
        with pytest.raises(CommandError, match="--interval must be >= 0 and --batch-size a positive number"):
            run("run_sagas", "--once", *args)

    def test_not_a_number(self) -> None:
        with pytest.raises(CommandError, match="invalid int value"):
            run("run_sagas", "--once", "--batch-size", "many")

    def test_no_sagas_registered(self, monkeypatch) -> None:
        monkeypatch.setattr(saga_registry, "_registry", {})

        with pytest.raises(CommandError, match="There are no sagas to run"):
            run("run_sagas", "--once")


def test_an_unknown_saga_exits_1_without_a_traceback(worker_env: dict[str, str]) -> None:
    result = manage(worker_env, "run_sagas", "--once", "--saga", "nope")

    assert result.returncode == 1
    assert "Unknown saga 'nope'. Known sagas: OrderFulfillment." in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_stops_after_the_current_batch(worker_env: dict[str, str], without_sagas, event_store) -> None:
    """A worker busy on a backlog exits 0 on SIGTERM, its lease freed; every order is handled once, no more.

    What the stopped worker committed agrees with its checkpoint (a saga exists exactly for the orders placed
    at or before it), and a second run finishes the rest without doubling any step.
    """
    dispatch(AddStock(sku="KETTLE", quantity=1000))
    orders = {place_order("KETTLE", 1): None for _ in range(40)}
    placed_at = {
        str(event.data.order_id): event.position for event in event_store.iter_all(event_types=["OrderPlaced"])
    }
    name = checkpoint_name(SHOP_SAGA)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "run_sagas", "--batch-size", "3", "--interval", "0.1"],
        cwd=REPO_ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Checkpoint.objects.filter(name=name, position__gt=min(placed_at.values())).exists():
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
    assert "Running sagas: saga:OrderFulfillment" in out
    assert "Stopped: the leases are released." in out
    checkpoint = Checkpoint.objects.get(name=name)
    assert checkpoint.lease_owner == ""
    started = set(SagaState.objects.filter(saga_type=SHOP_SAGA).values_list("correlation_id", flat=True))
    assert started == {order for order, position in placed_at.items() if position <= checkpoint.position}
    assert 0 < len(started) < len(orders)  # it stopped in the middle of the backlog

    run("run_sagas", "--once")

    for order_id in orders:
        counts = event_counts(event_store, order_id)
        assert (counts["StockReserved"], counts["PaymentAuthorised"], counts["OrderConfirmed"]) == (1, 1, 1)
        assert saga_of(order_id).status == SagaStatus.COMPLETED


# ---------------------------------------------------------------- eventsourcing_status
@pytest.mark.django_db
class TestStatusSagasSection:
    def test_shows_each_saga_manager_and_its_instances(self, without_sagas, settings, stock, event_store) -> None:
        settings.SHOP_PAYMENT_LIMIT = "100.00"
        place_order("KETTLE", 1)
        place_order("KETTLE", 1, unit_price="500.00")
        run("run_sagas", "--once")
        place_order("KETTLE", 1)  # not handled yet: the manager lags by one event

        out, _ = run("eventsourcing_status")

        section = out.split("\n\nSagas:\n")[1].split("\n\n")[0].splitlines()
        assert section[0].split() == ["name", "status", "position", "lag", "instances", "last_error"]
        row = next(line for line in section if line.startswith(SHOP_SAGA))
        position = Checkpoint.objects.get(name=checkpoint_name(SHOP_SAGA)).position
        assert re.fullmatch(rf"{SHOP_SAGA}\s+running\s+{position}\s+1\s+1 completed, 1 compensated", row)

    def test_json(self, without_sagas, stock, event_store) -> None:
        place_order("KETTLE", 1)
        run("run_sagas", "--once")

        out, _ = run("eventsourcing_status", "--json")

        report = json.loads(out)
        (row,) = [row for row in report["sagas"] if row["name"] == SHOP_SAGA]
        assert row | {"updated_at": None} == {
            "name": SHOP_SAGA,
            "checkpoint": "saga:OrderFulfillment",
            "status": "running",
            "position": event_store.head_position(),
            "head": event_store.head_position(),
            "lag": 0,
            "instances": {status: int(status == "completed") for status in SagaStatus.values},
            "last_error": "",
            "failed_position": None,
            "updated_at": None,
        }
        assert report["problems"] == []

    def test_a_saga_that_never_ran(self) -> None:
        report = json.loads(run("eventsourcing_status", "--json")[0])

        (row,) = [row for row in report["sagas"] if row["name"] == SHOP_SAGA]
        assert (row["status"], row["position"], set(row["instances"].values())) == ("running", 0, {0})

    def test_a_stopped_manager_is_a_problem(self) -> None:
        Checkpoint.objects.create(
            name=checkpoint_name(SHOP_SAGA),
            status=CheckpointStatus.FAILED,
            failed_position=4,
            last_error="KeyError: 'x'",
        )

        with pytest.raises(CommandError, match=r"Saga OrderFulfillment stopped at position 4: KeyError: 'x'"):
            run("eventsourcing_status")

    def test_compensation_failed_instances_are_a_problem(self) -> None:
        SagaState.objects.create(saga_type=SHOP_SAGA, correlation_id="o-1", status=SagaStatus.COMPENSATION_FAILED)
        SagaState.objects.create(saga_type=SHOP_SAGA, correlation_id="o-2", status=SagaStatus.COMPENSATION_FAILED)
        out = io.StringIO()

        with pytest.raises(CommandError, match=r"Saga OrderFulfillment: 2 instance\(s\) in compensation_failed"):
            call_command("eventsourcing_status", stdout=out)

        assert "2 compensation_failed" in out.getvalue()
