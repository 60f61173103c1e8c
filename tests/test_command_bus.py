"""The command bus from Python: dispatch, the middleware chain and each built-in middleware."""

from __future__ import annotations

import logging
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection, transaction
from prometheus_client import REGISTRY

from eventsourcing_app.commands import CommandBus, CommandContext, Middleware, command_registry, dispatch
from eventsourcing_app.exceptions import (
    CommandPermissionError,
    CommandTimeoutError,
    CommandValidationError,
    ConcurrencyError,
    TenantRequiredError,
    UnknownCommandError,
)
from eventsourcing_app.models import Event
from eventsourcing_app.store import EventStore
from project.shop.commands import AddStock, PlaceOrder, ReserveStock
from tests.conftest import dispatched_uncommitted, with_lock_timeout

pytestmark = pytest.mark.django_db

calls: list[str] = []


class RecordingMiddleware(Middleware):
    """A user's middleware: records that it ran, with its option."""

    def __init__(self, label: str = "recorded") -> None:
        self.label = label

    def __call__(self, command, context, next_):
        calls.append(f"{self.label}:{command.command_type}")
        return next_(command, context)


def order_body(**overrides) -> dict:
    return {"customer_id": "c-1", "items": [{"sku": "SKU-1", "quantity": 1, "unit_price": "5.00"}], **overrides}


class TestDispatch:
    def test_dispatch_from_python_returns_the_result(self) -> None:
        result = dispatch(AddStock(sku="SKU-PY", quantity=4))
        assert (result.aggregate_id, result.stream_id, result.version) == ("SKU-PY", "Inventory-SKU-PY", 1)
        assert result.events[0]["event_type"] == "StockAdded"

    def test_commands_are_validated_whatever_their_origin(self) -> None:
        with pytest.raises(CommandValidationError) as excinfo:
            dispatch(AddStock(sku="SKU-PY", quantity=-1))
        assert set(excinfo.value.errors) == {"quantity"}

    def test_validated_data_is_normalised(self) -> None:
        command = PlaceOrder(**order_body())
        dispatch(command)
        assert command.items[0]["unit_price"] == Decimal("5.00")

    def test_unknown_command_types_are_refused(self) -> None:
        class Unregistered(AddStock, command_type="Unregistered"):
            pass

        with pytest.raises(UnknownCommandError):
            dispatch(Unregistered(sku="S", quantity=1))

    def test_commands_are_discovered_from_installed_apps(self) -> None:
        assert {"AddStock", "PlaceOrder", "CancelOrder", "ShipOrder", "ReserveStock"} <= set(command_registry.names())

    def test_a_multi_aggregate_command_is_all_or_nothing(self) -> None:
        dispatch(AddStock(sku="SKU-A", quantity=5))
        dispatch(AddStock(sku="SKU-B", quantity=1))
        order = dispatch(
            PlaceOrder(
                **order_body(
                    items=[
                        {"sku": "SKU-A", "quantity": 2, "unit_price": "1.00"},
                        {"sku": "SKU-B", "quantity": 2, "unit_price": "1.00"},
                    ]
                )
            )
        )
        with pytest.raises(Exception, match="Only 1 of SKU-B available"):
            dispatch(ReserveStock(order_id=order.aggregate_id))
        assert EventStore().stream_info("Inventory-SKU-A").version == 1  # SKU-A's reservation rolled back


class TestCorrelation:
    def test_events_carry_the_correlation_id_and_the_command_as_causation(self) -> None:
        command = AddStock(sku="SKU-C", quantity=1)
        result = dispatch(command, correlation_id="corr-9")
        (event,) = EventStore().read_stream("Inventory-SKU-C")
        assert event.metadata["correlation_id"] == result.correlation_id == "corr-9"
        assert event.metadata["causation_id"] == str(command.command_id)

    def test_saga_issued_commands_keep_their_causation(self) -> None:
        dispatch(AddStock(sku="SKU-C", quantity=1), correlation_id="saga-1", causation_id="event-7")
        (event,) = EventStore().read_stream("Inventory-SKU-C")
        assert (event.metadata["correlation_id"], event.metadata["causation_id"]) == ("saga-1", "event-7")

    def test_a_correlation_id_is_made_when_none_is_given(self) -> None:
        result = dispatch(AddStock(sku="SKU-C", quantity=1))
        uuid.UUID(result.correlation_id)


class TestMiddlewareChain:
    def test_user_middleware_runs_with_options_and_command_limits(self, settings) -> None:
        calls.clear()
        settings.EVENTSOURCING = {
            "COMMAND_MIDDLEWARE": [
                "tests.test_command_bus.RecordingMiddleware",
                {
                    "class": "tests.test_command_bus.RecordingMiddleware",
                    "options": {"label": "only-stock"},
                    "commands": ["AddStock"],
                },
                "eventsourcing_app.commands.middleware.validation.ValidationMiddleware",
            ]
        }
        dispatch(AddStock(sku="SKU-M", quantity=1))
        dispatch(PlaceOrder(**order_body()))
        assert calls == ["recorded:AddStock", "only-stock:AddStock", "recorded:PlaceOrder"]

    def test_a_bus_can_be_given_its_own_chain(self) -> None:
        calls.clear()
        bus = CommandBus(middleware=["tests.test_command_bus.RecordingMiddleware"])
        command = AddStock(sku="SKU-M", quantity=1)
        command.validate()
        bus.dispatch(command, CommandContext())
        assert calls == ["recorded:AddStock"]

    def test_one_structured_log_line_per_command(self, caplog) -> None:
        with caplog.at_level(logging.INFO, logger="eventsourcing_app.commands"):
            dispatch(AddStock(sku="SKU-L", quantity=1), correlation_id="corr-log")
            with pytest.raises(CommandValidationError):
                dispatch(AddStock(sku="SKU-L", quantity=0))
        lines = [r for r in caplog.records if r.name == "eventsourcing_app.commands"]
        assert [(r.command_type, r.outcome) for r in lines] == [("AddStock", "ok"), ("AddStock", "invalid")]
        assert lines[0].correlation_id == "corr-log"
        assert lines[0].duration_ms >= 0

    def test_metrics_count_commands_by_outcome(self) -> None:
        def count(outcome: str) -> float:
            value = REGISTRY.get_sample_value(
                "eventsourcing_commands_total", {"command_type": "AddStock", "outcome": outcome}
            )
            return value or 0.0

        ok, invalid = count("ok"), count("invalid")
        dispatch(AddStock(sku="SKU-X", quantity=1))
        with pytest.raises(CommandValidationError):
            dispatch(AddStock(sku="SKU-X", quantity=0))
        assert (count("ok"), count("invalid")) == (ok + 1, invalid + 1)
        assert REGISTRY.get_sample_value("eventsourcing_command_duration_seconds_count", {"command_type": "AddStock"})


def every_save_conflicts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make every aggregate save lose its race; the list it returns grows by one per attempt."""
    attempts: list[int] = []

    def conflict(self, aggregate):
        attempts.append(1)
        raise ConcurrencyError(aggregate.stream_id, aggregate.loaded_version, aggregate.loaded_version + 1)

    monkeypatch.setattr(CommandContext, "save", conflict)
    return attempts


class TestRetry:
    def test_a_lost_race_is_retried_from_a_fresh_load(self, monkeypatch) -> None:
        dispatch(AddStock(sku="SKU-R", quantity=1))
        real_save = CommandContext.save
        loaded_versions = []

        def lose_the_first_race(self, aggregate):
            loaded_versions.append(aggregate.loaded_version)
            if len(loaded_versions) == 1:
                raise ConcurrencyError(aggregate.stream_id, aggregate.loaded_version, aggregate.loaded_version + 1)
            return real_save(self, aggregate)

        monkeypatch.setattr(CommandContext, "save", lose_the_first_race)
        result = dispatch(AddStock(sku="SKU-R", quantity=1))
        assert loaded_versions == [1, 1]  # each attempt loaded the aggregate afresh
        assert result.version == 2
        assert [e["version"] for e in result.events] == [2]  # only the successful attempt's events

    def test_retries_are_bounded(self, monkeypatch, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "COMMAND_RETRY": {"ATTEMPTS": 2, "BASE_DELAY": 0}}
        attempts = every_save_conflicts(monkeypatch)
        with pytest.raises(ConcurrencyError):
            dispatch(AddStock(sku="SKU-R", quantity=1))
        assert len(attempts) == 2

    def test_conditional_commands_are_not_retried(self, monkeypatch) -> None:
        attempts = every_save_conflicts(monkeypatch)
        with pytest.raises(ConcurrencyError):
            dispatch(AddStock(sku="SKU-R", quantity=1), expected_version=0)
        assert len(attempts) == 1

    def test_a_command_without_a_savepoint_of_its_own_is_left_to_its_caller_to_retry(self, monkeypatch) -> None:
        """Its lost race marks the caller's transaction for rollback: a retry could only fail on that."""
        attempts = every_save_conflicts(monkeypatch)
        with pytest.raises(ConcurrencyError), transaction.atomic():
            dispatch(AddStock(sku="SKU-R", quantity=1), savepoint=False)
        assert len(attempts) == 1

        with transaction.atomic():
            with pytest.raises(ConcurrencyError):
                dispatch(AddStock(sku="SKU-R", quantity=1))  # its own savepoint: retried, and still usable
            assert len(attempts) == 1 + 3
            assert not connection.needs_rollback


class TestTenant:
    def test_tenant_from_the_context_is_stamped_on_events(self) -> None:
        dispatch(AddStock(sku="SKU-T", quantity=1), tenant_id="acme")
        assert EventStore().read_stream("Inventory-SKU-T")[0].metadata["tenant_id"] == "acme"

    def test_required_tenant(self, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "TENANT_REQUIRED": True}
        with pytest.raises(TenantRequiredError):
            dispatch(AddStock(sku="SKU-T", quantity=1))

    def test_a_user_bound_to_a_tenant_cannot_act_for_another(self, settings, plain_user) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "TENANT_RESOLVER": "tests.test_command_bus.tenant_of"}
        with pytest.raises(CommandPermissionError):
            dispatch(AddStock(sku="SKU-T", quantity=1), user=plain_user, tenant_id="other")
        dispatch(AddStock(sku="SKU-T", quantity=1), user=plain_user)
        assert EventStore().read_stream("Inventory-SKU-T")[0].metadata["tenant_id"] == "tenant-of-plain"


def tenant_of(user) -> str:
    return f"tenant-of-{user.username}"


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_oversell(without_sagas) -> None:
    """Eight threads race to reserve from 3 units: the retry middleware and versions keep stock >= 0."""
    dispatch(AddStock(sku="SKU-RACE", quantity=3))
    orders = [
        dispatch(PlaceOrder(**order_body(items=[{"sku": "SKU-RACE", "quantity": 1, "unit_price": "1"}])))
        for _ in range(8)
    ]
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def reserve(order_id: str) -> None:
        barrier.wait()
        try:
            dispatch(ReserveStock(order_id=order_id))
            outcomes.append("reserved")
        except Exception as exc:  # the outcome is what the test counts
            outcomes.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=reserve, args=(o.aggregate_id,)) for o in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    inventory = EventStore().read_stream("Inventory-SKU-RACE")
    reserved = [e for e in inventory if e.event_type == "StockReserved"]
    assert outcomes.count("reserved") == len(reserved) <= 3
    assert set(outcomes) <= {"reserved", "CommandRejectedError", "ConcurrencyError"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_command_waiting_on_a_lock_past_lock_timeout_times_out() -> None:
    """A lock wait cut off by the connection's lock_timeout ends the command as its time limit does (503)."""
    with dispatched_uncommitted(AddStock(sku="SKU-LOCKED", quantity=1)), pytest.raises(CommandTimeoutError):
        with_lock_timeout(lambda: dispatch(AddStock(sku="SKU-LOCKED", quantity=1)))

    assert Event.objects.filter(stream_id="Inventory-SKU-LOCKED").count() == 1
