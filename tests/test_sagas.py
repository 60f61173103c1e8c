"""The saga machinery, with sagas defined here: steps, compensation, timeouts, redelivery, crashes.

The sagas below react to the shop's OrderPlaced and use AddStock as a harmless
"do something" command: stream `Inventory-<sku>` shows what ran, and in what order.
Tests drive the saga manager by hand (no on-commit nudges inside the test's transaction).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from eventsourcing_app.commands import dispatch
from eventsourcing_app.models import Checkpoint, CheckpointStatus, IdempotencyRecord, SagaState, SagaStatus
from eventsourcing_app.projections import ProjectionRunner
from eventsourcing_app.sagas import Saga, SagaInstance, Step, on, saga_registry
from eventsourcing_app.sagas.manager import SagaConflictError, save_over_many
from eventsourcing_app.store import EventStore, NewEvent, RecordedEvent
from project.shop.commands import AddStock, ConfirmOrder, PlaceOrder, ReserveStock
from tests.factories import SagaStateFactory

pytestmark = pytest.mark.django_db


def note(name: str) -> AddStock:
    """A command whose only effect is an event in stream Inventory-<name>."""
    return AddStock(sku=name, quantity=1)


def ran(prefix: str) -> list[str]:
    """Notes whose SKU starts with `prefix`, in log order."""
    return [
        e.data.sku for e in EventStore().iter_all() if e.event_type == "StockAdded" and e.data.sku.startswith(prefix)
    ]


class ThreeSteps(Saga):
    """Three steps that succeed, then a fourth the domain refuses (a ReserveStock for an unknown order)."""

    name = "tests.ThreeSteps"
    starts_with = ("OrderPlaced",)
    correlation_field = "order_id"
    fourth_refused = True

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        steps = [Step(f"step-{n}", note(f"do-{n}"), compensate=note(f"undo-{n}")) for n in "abc"]
        if self.fourth_refused:
            steps.append(Step("step-d", ReserveStock(order_id=uuid.uuid4())))
        else:
            saga.complete()
        return steps


class Deadline(Saga):
    """Does one step, then waits for an OrderConfirmed that never comes."""

    name = "tests.Deadline"
    starts_with = ("OrderPlaced",)
    correlation_field = "order_id"

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        saga.set_deadline(timedelta(minutes=5))
        return [Step("hold", note("deadline-hold"), compensate=note("deadline-release"))]

    @on("OrderConfirmed")
    def confirmed(self, saga: SagaInstance, event: RecordedEvent) -> None:
        saga.clear_deadline()
        saga.complete()


class BadCompensation(Saga):
    """Its only compensation refers to an order that does not exist: it can never succeed."""

    name = "tests.BadCompensation"
    starts_with = ("OrderPlaced",)
    correlation_field = "order_id"

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        saga.compensate_with("ghost", ConfirmOrder(order_id=uuid.uuid4()))
        saga.fail("give up at once")
        return []


class Crashing(Saga):
    """Dispatches a command, then its handler blows up (a bug): nothing of the batch may stay."""

    name = "tests.Crashing"
    starts_with = ("OrderPlaced",)
    correlation_field = "order_id"
    broken = True

    @on("OrderPlaced")
    def placed(self, saga: SagaInstance, event: RecordedEvent) -> list[Step]:
        dispatch(note("crash-side-effect"))
        if self.broken:
            raise RuntimeError("bug in the saga")
        return []


@pytest.fixture
def registered() -> Iterator[callable]:
    names: list[str] = []

    def register(saga_class: type[Saga]) -> Saga:
        saga = saga_class()
        saga_registry.register(saga.name, saga)
        names.append(saga.name)
        return saga

    yield register
    for name in names:
        saga_registry.unregister(name)


def run(saga: Saga) -> int:
    return ProjectionRunner(saga_registry.manager(saga.name)).run()


def place_order() -> str:
    body = {"customer_id": "c", "items": [{"sku": "SKU-S", "quantity": 1, "unit_price": "1.00"}]}
    return dispatch(PlaceOrder(**body)).aggregate_id


def state_of(saga: Saga, order_id: str) -> SagaState:
    return SagaState.objects.get(saga_type=saga.name, correlation_id=order_id)


def test_compensations_run_newest_first_when_a_step_is_refused(registered) -> None:
    saga = registered(ThreeSteps)
    order_id = place_order()
    run(saga)
    assert ran("do-") == ["do-a", "do-b", "do-c"]
    assert ran("undo-") == ["undo-c", "undo-b", "undo-a"]
    state = state_of(saga, order_id)
    assert (state.status, state.current_step, state.compensations) == (SagaStatus.COMPENSATED, "step-d", [])
    assert "step-d" in state.last_error
    kinds = [entry["kind"] for entry in state.history]
    assert kinds == ["event", "command", "command", "command", "refused", "failed"] + ["compensated"] * 3 + ["status"]


def test_a_saga_that_completes_keeps_its_compensations_unused(registered) -> None:
    saga = registered(ThreeSteps)
    saga.fourth_refused = False
    order_id = place_order()
    run(saga)
    state = state_of(saga, order_id)
    assert state.status == SagaStatus.COMPLETED
    assert state.completed_at is not None
    assert [c["step"] for c in state.compensations] == ["step-a", "step-b", "step-c"]
    assert ran("undo-") == []


def test_a_redelivered_event_is_handled_once(registered) -> None:
    saga = registered(ThreeSteps)
    saga.fourth_refused = False
    place_order()
    run(saga)
    Checkpoint.objects.filter(name=f"saga:{saga.name}").update(position=0)  # the log is delivered again
    run(saga)
    assert ran("do-") == ["do-a", "do-b", "do-c"]


def test_commands_are_keyed_by_saga_and_step_so_a_resumed_saga_does_not_repeat_them(registered) -> None:
    """Had the state been lost after the commands ran, handling the event again replays their results."""
    saga = registered(ThreeSteps)
    saga.fourth_refused = False
    order_id = place_order()
    run(saga)
    keys = set(IdempotencyRecord.objects.values_list("key", flat=True))
    assert {f"saga:{saga.name}:{order_id}:step-{n}" for n in "abc"} <= keys
    SagaState.objects.filter(saga_type=saga.name).delete()
    Checkpoint.objects.filter(name=f"saga:{saga.name}").update(position=0)
    run(saga)
    assert ran("do-") == ["do-a", "do-b", "do-c"]
    assert state_of(saga, order_id).status == SagaStatus.COMPLETED


def test_commands_carry_the_events_correlation_id_and_the_event_as_causation(registered) -> None:
    saga = registered(ThreeSteps)
    saga.fourth_refused = False
    dispatch(
        PlaceOrder(customer_id="c", items=[{"sku": "S", "quantity": 1, "unit_price": "1"}]), correlation_id="corr-1"
    )
    run(saga)
    placed = next(e for e in EventStore().iter_all() if e.event_type == "OrderPlaced")
    notes = [e for e in EventStore().iter_all() if e.event_type == "StockAdded"]
    assert {e.metadata["correlation_id"] for e in notes} == {"corr-1"}
    assert {e.metadata["causation_id"] for e in notes} == {str(placed.event_id)}


def test_a_timeout_compensates_and_fires_once(registered) -> None:
    saga = registered(Deadline)
    order_id = place_order()
    run(saga)
    state = state_of(saga, order_id)
    assert state.status == SagaStatus.RUNNING
    assert state.deadline is not None
    manager = saga_registry.manager(saga.name)
    assert manager.fire_timeouts() == 0  # not due yet
    later = timezone.now() + timedelta(minutes=6)
    assert manager.fire_timeouts(now=later) == 1
    assert manager.fire_timeouts(now=later) == 0
    state = state_of(saga, order_id)
    assert (state.status, state.deadline) == (SagaStatus.COMPENSATED, None)
    assert "timed out" in state.last_error
    assert ran("deadline-") == ["deadline-hold", "deadline-release"]


def test_an_event_in_time_clears_the_deadline(registered) -> None:
    saga = registered(Deadline)
    order_id = place_order()
    run(saga)
    dispatch(ConfirmOrder(order_id=order_id))
    run(saga)
    assert state_of(saga, order_id).status == SagaStatus.COMPLETED
    assert saga_registry.manager(saga.name).fire_timeouts(now=timezone.now() + timedelta(hours=1)) == 0


def test_a_failing_compensation_is_retried_then_the_saga_is_marked_compensation_failed(registered, settings) -> None:
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "SAGA_COMPENSATION_ATTEMPTS": 3, "SAGA_COMPENSATION_BACKOFF": 0}
    saga = registered(BadCompensation)
    order_id = place_order()
    run(saga)
    state = state_of(saga, order_id)
    assert state.status == SagaStatus.COMPENSATION_FAILED
    assert [c["step"] for c in state.compensations] == ["ghost"]  # left for an operator to retry
    assert [entry["attempt"] for entry in state.history if entry["kind"] == "compensation_error"] == [1, 2, 3]
    assert "ghost" in state.last_error


def test_a_crash_mid_batch_leaves_nothing_and_the_event_is_handled_after_the_fix(registered) -> None:
    saga = registered(Crashing)
    order_id = place_order()
    run(saga)
    checkpoint = Checkpoint.objects.get(name=f"saga:{saga.name}")
    assert checkpoint.status == CheckpointStatus.FAILED
    assert "bug in the saga" in checkpoint.last_error
    assert ran("crash-") == []
    assert not SagaState.objects.filter(saga_type=saga.name).exists()
    saga.broken = False
    Checkpoint.objects.filter(name=checkpoint.name).update(status=CheckpointStatus.RUNNING)
    run(saga)
    assert ran("crash-") == ["crash-side-effect"]
    assert state_of(saga, order_id).status == SagaStatus.RUNNING


def test_events_of_instances_that_never_started_are_ignored(registered) -> None:
    saga = registered(Deadline)
    dispatch(AddStock(sku="SKU-S", quantity=1))
    order_id = place_order()
    after_placed = EventStore().head_position()
    dispatch(ConfirmOrder(order_id=order_id))
    Checkpoint.objects.update_or_create(name=f"saga:{saga.name}", defaults={"position": after_placed})
    run(saga)
    assert not SagaState.objects.filter(saga_type=saga.name).exists()


class OrdersOnly(ThreeSteps):
    name = "tests.OrdersOnly"
    categories = ("Order",)
    fourth_refused = False


def test_a_saga_with_categories_ignores_its_event_types_in_other_streams(registered) -> None:
    saga = registered(OrdersOnly)
    order_id = place_order()
    # The same event type in another category (another context's "OrderPlaced", say) is not the saga's.
    lookalike = {"order_id": str(uuid.uuid4()), "customer_id": "c", "items": [], "total": "0"}
    EventStore().append(f"Imported-{uuid.uuid4()}", [NewEvent("OrderPlaced", lookalike)])
    run(saga)
    assert list(SagaState.objects.filter(saga_type=saga.name).values_list("correlation_id", flat=True)) == [
        str(order_id)
    ]
    assert saga_registry.manager(saga.name).wants("OrderPlaced", "Order")
    assert not saga_registry.manager(saga.name).wants("OrderPlaced", "Imported")


def test_a_saga_must_handle_the_events_it_starts_with() -> None:
    with pytest.raises(ValueError, match="no @on handler"):

        class Broken(Saga):
            starts_with = ("OrderPlaced",)


def test_a_saga_needs_a_correlation(registered) -> None:
    class Uncorrelated(Saga):
        name = "tests.Uncorrelated"
        starts_with = ("OrderPlaced",)

        @on("OrderPlaced")
        def placed(self, saga: SagaInstance, event: RecordedEvent) -> None:
            return None

    saga = registered(Uncorrelated)
    place_order()
    run(saga)
    checkpoint = Checkpoint.objects.get(name=f"saga:{saga.name}")
    assert checkpoint.status == CheckpointStatus.FAILED
    assert "correlation_field" in checkpoint.last_error


def test_an_event_redelivered_to_a_running_instance_is_handled_once(registered) -> None:
    saga = registered(Deadline)
    order_id = place_order()
    run(saga)
    Checkpoint.objects.filter(name=f"saga:{saga.name}").update(position=0)  # OrderPlaced is delivered again
    run(saga)
    state = state_of(saga, order_id)
    assert state.status == SagaStatus.RUNNING
    assert ran("deadline-") == ["deadline-hold"]
    assert [entry["kind"] for entry in state.history] == ["event", "command"]


def test_timeout_commands_carry_the_correlation_id_of_the_event_that_started_the_saga(registered) -> None:
    saga = registered(Deadline)
    body = {"customer_id": "c", "items": [{"sku": "S", "quantity": 1, "unit_price": "1"}]}
    order_id = dispatch(PlaceOrder(**body), correlation_id="corr-timeout").aggregate_id
    run(saga)
    saga_registry.manager(saga.name).fire_timeouts(now=timezone.now() + timedelta(minutes=6))
    (release,) = [
        e for e in EventStore().iter_all() if e.event_type == "StockAdded" and e.data.sku == "deadline-release"
    ]
    assert release.metadata["correlation_id"] == "corr-timeout"
    assert release.metadata["causation_id"] == f"saga:{saga.name}:timeout"
    assert state_of(saga, order_id).trace_id == "corr-timeout"


def test_a_lost_race_is_retried_not_compensated(registered, monkeypatch) -> None:
    """A ConcurrencyError that outlasts the bus's retries makes the runner retry the batch; the saga goes on."""
    from eventsourcing_app.exceptions import ConcurrencyError

    saga = registered(ThreeSteps)
    saga.fourth_refused = False
    order_id = place_order()
    manager = saga_registry.manager(saga.name)
    original, losses = manager._dispatch, []

    def lose_once(*args, **kwargs):
        if not losses:
            losses.append(1)
            raise ConcurrencyError("Inventory-do-a", 1, 2)
        return original(*args, **kwargs)

    monkeypatch.setattr(manager, "_dispatch", lose_once)
    run(saga)
    assert state_of(saga, order_id).status == SagaStatus.COMPLETED
    assert ran("do-") == ["do-a", "do-b", "do-c"]
    assert ran("undo-") == []


def in_another_thread(work: Callable[[], Any]) -> Any:
    """work() on a thread of its own (so with its own database connection): its result, or the error it raised."""
    outcome: list[Any] = []

    def run_work() -> None:
        try:
            outcome.append(work())
        except Exception as error:
            outcome.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run_work)
    thread.start()
    thread.join(30)
    assert outcome, "the other thread did not finish"
    return outcome[0]


class Watching(Deadline):
    """Deadline, which while it handles OrderConfirmed lets `meanwhile` run in another thread."""

    name = "tests.Watching"
    meanwhile: Callable[[], Any] = staticmethod(lambda: None)
    seen: Any = None

    @on("OrderConfirmed")
    def confirmed(self, saga: SagaInstance, event: RecordedEvent) -> None:
        self.seen = in_another_thread(self.meanwhile)
        saga.clear_deadline()
        saga.complete()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_timeout_never_fires_on_an_instance_a_batch_is_handling(registered, without_sagas) -> None:
    """The timeout task, run while a batch handles an event of an instance past its deadline, skips it."""
    saga = registered(Watching)
    order_id = place_order()
    run(saga)  # running, with a deadline
    manager = saga_registry.manager(saga.name)
    later = timezone.now() + timedelta(minutes=10)
    saga.meanwhile = lambda: manager.fire_timeouts(now=later)
    dispatch(ConfirmOrder(order_id=order_id))

    run(saga)  # while it handles OrderConfirmed, the deadline has passed for the timeout task

    assert saga.seen == 0  # the instance was skipped, not fired
    assert manager.fire_timeouts(now=later) == 0  # and once the batch is done, it has completed
    assert state_of(saga, order_id).status == SagaStatus.COMPLETED
    assert ran("deadline-") == ["deadline-hold"]  # no compensation ran


class TestSavingInstances:
    def test_a_batch_of_instances_is_written_back_each_over_its_version(self) -> None:
        states = SagaStateFactory.create_batch(3)
        for state in states:
            state.current_step = "next"

        save_over_many([(state, 1) for state in states], using="default")

        assert set(SagaState.objects.values_list("current_step", "version")) == {("next", 2)}

    def test_an_instance_moved_past_the_version_read_is_a_conflict(self) -> None:
        kept, moved = SagaStateFactory.create_batch(2)
        SagaState.objects.filter(pk=moved.pk).update(version=5)

        with pytest.raises(SagaConflictError, match=f"1 of these saga instances moved.*{moved.correlation_id}"):
            save_over_many([(kept, 1), (moved, 1)], using="default")
