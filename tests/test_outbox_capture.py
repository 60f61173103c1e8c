"""Capture from ordinary models: a captured model's creates, updates and deletes become events in its transaction."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.checks import run_checks
from django.db import transaction
from rest_framework import serializers

from eventsourcing_app.commands import Command, CommandBus, CommandContext
from eventsourcing_app.commands.registry import CommandRegistry, Registration
from eventsourcing_app.conf import DEFAULTS
from eventsourcing_app.models import OutboxMessage, OutboxStatus
from eventsourcing_app.outbox import OutboxProcessor
from eventsourcing_app.store import EventStore, RecordedEvent
from project.shop.models import OrderSummary, Supplier

SUPPLIER_TYPES = ["shop.Supplier.created", "shop.Supplier.updated", "shop.Supplier.deleted"]


class Boom(Exception):
    """Raised to roll a test's transaction back."""


def failing_hook(recorded: list[RecordedEvent]) -> None:
    """An APPEND_HOOK that fails every append of a captured event (and so the append's transaction)."""
    raise Boom("the append failed")


failing_hook.wants = lambda event_types: any(t.startswith("shop.Supplier.") for t in event_types)


def rolled_back(change: Callable[[], object]) -> None:
    """Run `change` in a transaction (or savepoint) that is then rolled back."""
    with transaction.atomic():
        change()
        transaction.set_rollback(True)


def supplier_events(pk: int | None = None) -> list[RecordedEvent]:
    events = EventStore().read_all(event_types=SUPPLIER_TYPES, limit=1000)
    return [e for e in events if pk is None or e.stream_id == f"shop.Supplier-{pk}"]


def summary(events: list[RecordedEvent]) -> list[tuple[str, dict]]:
    return [(e.event_type.rsplit(".", 1)[1], e.data) for e in events]


def capture(settings, *entries) -> None:
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "OUTBOX_CAPTURE_MODELS": list(entries)}


@pytest.mark.django_db
class TestEvents:
    def test_create_records_every_captured_field_in_the_rows_stream(self) -> None:
        supplier = Supplier.objects.create(name="Acme", email="sales@acme.test")

        (event,) = supplier_events()
        assert event.stream_id == f"shop.Supplier-{supplier.pk}"
        assert event.category == "shop.Supplier"
        assert event.version == 1
        assert event.event_type == "shop.Supplier.created"
        assert event.data == {"pk": supplier.pk, "fields": {"name": "Acme", "email": "sales@acme.test", "active": True}}

    def test_update_records_only_the_changed_fields_with_their_previous_values(self) -> None:
        supplier = Supplier.objects.create(name="Acme", email="sales@acme.test")
        supplier.email = "orders@acme.test"
        supplier.save()

        assert summary(supplier_events(supplier.pk))[1:] == [
            (
                "updated",
                {"pk": supplier.pk, "fields": {"email": "orders@acme.test"}, "previous": {"email": "sales@acme.test"}},
            )
        ]

    def test_changes_are_compared_with_the_values_as_loaded(self) -> None:
        pk = Supplier.objects.create(name="Acme").pk
        loaded = Supplier.objects.get(pk=pk)
        loaded.active = False
        loaded.save()

        assert summary(supplier_events(pk))[1:] == [
            ("updated", {"pk": pk, "fields": {"active": False}, "previous": {"active": True}})
        ]

    def test_a_save_that_changes_nothing_records_nothing(self) -> None:
        supplier = Supplier.objects.create(name="Acme")
        supplier.save()
        Supplier.objects.get(pk=supplier.pk).save()
        supplier.name = "Acme"  # assigned, but the same value
        supplier.save()

        assert [e.event_type for e in supplier_events()] == ["shop.Supplier.created"]

    def test_update_fields_limits_what_is_saved_and_compared(self) -> None:
        supplier = Supplier.objects.create(name="Acme", email="a@acme.test")
        supplier.name, supplier.email = "Acme Ltd", "b@acme.test"
        supplier.save(update_fields=["name"])
        supplier.save()  # now the email, which the partial save did not write

        assert [e.data["fields"] for e in supplier_events()[1:]] == [{"name": "Acme Ltd"}, {"email": "b@acme.test"}]

    def test_deferred_fields_are_not_loaded_to_be_recorded(self) -> None:
        pk = Supplier.objects.create(name="Acme", email="a@acme.test").pk
        partial = Supplier.objects.only("name").get(pk=pk)
        partial.name = "Acme Ltd"
        partial.save()  # Django writes the loaded fields only

        assert supplier_events(pk)[-1].data["fields"] == {"name": "Acme Ltd"}

    def test_values_reloaded_from_the_database_are_not_changes(self) -> None:
        supplier = Supplier.objects.create(name="Acme", email="a@acme.test")
        Supplier.objects.filter(pk=supplier.pk).update(name="Acme Ltd")  # bypasses capture
        supplier.refresh_from_db()
        supplier.save()

        partial = Supplier.objects.only("name").get(pk=supplier.pk)
        assert partial.email == "a@acme.test"  # a deferred field, loaded on access
        partial.email = "b@acme.test"
        partial.save()

        assert [(e.data["fields"], e.data.get("previous")) for e in supplier_events()[1:]] == [
            ({"email": "b@acme.test"}, {"email": "a@acme.test"})
        ]

    def test_delete_records_the_primary_key_and_the_last_values(self) -> None:
        supplier = Supplier.objects.create(name="Acme", email="a@acme.test", active=False)
        pk = supplier.pk
        supplier.delete()

        event = supplier_events(pk)[-1]
        assert (event.event_type, event.version) == ("shop.Supplier.deleted", 2)
        assert event.data == {"pk": pk, "fields": {"name": "Acme", "email": "a@acme.test", "active": False}}

    def test_queryset_delete_records_one_event_per_row(self) -> None:
        pks = [Supplier.objects.create(name=name).pk for name in ("A", "B", "C")]
        Supplier.objects.filter(name__in=["A", "B"]).delete()

        deleted = sorted(e.data["pk"] for e in supplier_events() if e.event_type == "shop.Supplier.deleted")
        assert deleted == pks[:2]

    def test_bulk_operations_bypass_capture(self) -> None:
        Supplier.objects.bulk_create([Supplier(name="A"), Supplier(name="B")])
        Supplier.objects.update(active=False)
        Supplier.objects.bulk_update(list(Supplier.objects.all()), ["active"])

        assert Supplier.objects.filter(active=False).count() == 2
        assert supplier_events() == []

    def test_edits_in_the_admin_are_captured(self, admin_client) -> None:
        response = admin_client.post("/admin/shop/supplier/add/", {"name": "Acme", "email": "", "active": "on"})
        assert response.status_code == 302
        supplier = Supplier.objects.get()

        response = admin_client.post(
            f"/admin/shop/supplier/{supplier.pk}/change/", {"name": "Acme", "email": "a@acme.test", "active": "on"}
        )
        assert response.status_code == 302

        assert summary(supplier_events()) == [
            ("created", {"pk": supplier.pk, "fields": {"name": "Acme", "email": "", "active": True}}),
            ("updated", {"pk": supplier.pk, "fields": {"email": "a@acme.test"}, "previous": {"email": ""}}),
        ]

    def test_events_carry_the_commands_correlation_and_causation(self, superuser) -> None:
        class RenameSupplier(Command):
            supplier_id = serializers.IntegerField()
            name = serializers.CharField()

        def rename(command: RenameSupplier, context: CommandContext) -> None:
            supplier = Supplier.objects.get(pk=command.supplier_id)
            supplier.name = command.name
            supplier.save()

        registry = CommandRegistry()
        registry.register("RenameSupplier", Registration(RenameSupplier, rename))
        supplier = Supplier.objects.create(name="Acme")
        command = RenameSupplier(supplier_id=supplier.pk, name="Acme Ltd")

        result = CommandBus(registry=registry).dispatch(command, CommandContext(user=superuser))

        created, updated = supplier_events(supplier.pk)
        assert created.metadata == {}
        assert updated.metadata["correlation_id"] == result.correlation_id
        assert updated.metadata["causation_id"] == str(command.command_id)
        assert updated.metadata["user_id"] == str(superuser.pk)


@pytest.mark.django_db
class TestOutbox:
    @pytest.fixture(autouse=True)
    def _crm_route(self, settings) -> None:
        settings.EVENTSOURCING = {
            **settings.EVENTSOURCING,
            "OUTBOX_DESTINATIONS": {"crm": {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher"}},
            "OUTBOX_ROUTES": [{"events": ["shop.Supplier.*"], "destination": "crm"}],
        }

    def test_captured_events_take_the_routes_that_match_them(self, caplog) -> None:
        supplier = Supplier.objects.create(name="Acme")
        supplier.name = "Acme Ltd"
        supplier.save()

        messages = list(OutboxMessage.objects.order_by("id"))
        assert [(m.event_type, m.destination, m.stream_id) for m in messages] == [
            ("shop.Supplier.created", "crm", f"shop.Supplier-{supplier.pk}"),
            ("shop.Supplier.updated", "crm", f"shop.Supplier-{supplier.pk}"),
        ]
        assert messages[1].payload["data"] == {
            "pk": supplier.pk,
            "fields": {"name": "Acme Ltd"},
            "previous": {"name": "Acme"},
        }

        with caplog.at_level("INFO", logger="eventsourcing_app.outbox"), OutboxProcessor() as processor:
            assert processor.run().delivered == 2
        assert set(OutboxMessage.objects.values_list("status", flat=True)) == {OutboxStatus.DELIVERED}
        assert "shop.Supplier.updated" in caplog.text

    def test_a_rolled_back_change_writes_no_message(self) -> None:
        rolled_back(lambda: Supplier.objects.create(name="Never"))

        assert not OutboxMessage.objects.exists()


@pytest.mark.django_db
class TestSetting:
    def test_values_are_json_ready(self, settings) -> None:
        capture(settings, "shop.OrderSummary")
        order_id = uuid.uuid4()
        placed_at = datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
        OrderSummary.objects.create(
            order_id=order_id,
            customer_id="c-1",
            status="placed",
            total=Decimal("12.50"),
            items=[{"sku": "S", "quantity": 1}],
            placed_at=placed_at,
            updated_at=placed_at,
        )

        (event,) = EventStore().read_stream(f"shop.OrderSummary-{order_id}")
        assert event.data == {
            "pk": str(order_id),
            "fields": {
                "customer_id": "c-1",
                "status": "placed",
                "total": "12.50",
                "items": [{"sku": "S", "quantity": 1}],
                "placed_at": "2025-01-02T03:04:05.678901+00:00",
                "updated_at": "2025-01-02T03:04:05.678901+00:00",
            },
        }

    def test_a_foreign_key_is_recorded_as_the_related_primary_key(self, settings) -> None:
        capture(settings, {"model": "auth.Permission", "fields": ["codename", "content_type"]})
        content_type = ContentType.objects.get_for_model(Supplier)
        permission = Permission.objects.create(codename="audit_supplier", name="Can audit", content_type=content_type)

        (event,) = EventStore().read_stream(f"auth.Permission-{permission.pk}")
        assert event.data["fields"] == {"codename": "audit_supplier", "content_type": content_type.pk}

    def test_fields_and_exclude_choose_what_is_recorded(self, settings) -> None:
        capture(settings, {"model": "shop.Supplier", "exclude": ["email"]})
        supplier = Supplier.objects.create(name="Acme", email="a@acme.test")
        supplier.email = "b@acme.test"  # not captured: this save records nothing
        supplier.save()

        assert summary(supplier_events()) == [
            ("created", {"pk": supplier.pk, "fields": {"name": "Acme", "active": True}})
        ]

    def test_models_not_listed_are_not_captured(self, settings) -> None:
        capture(settings)
        Supplier.objects.create(name="Acme")

        assert supplier_events() == []

    @pytest.mark.parametrize(
        ("entry", "message"),
        [
            ("shop.Nope", "no model 'shop.Nope'"),
            ({"model": "shop.Supplier", "fields": ["phone"]}, "has no field 'phone'"),
            ({"model": "shop.Supplier", "colour": "red"}, "unknown keys ['colour']"),
            ({"model": "auth.User", "exclude": ["groups"]}, "not a column"),
            (42, "neither"),
        ],
    )
    def test_a_bad_entry_is_a_system_check_error(self, settings, entry, message) -> None:
        capture(settings, entry)

        (error,) = [e for e in run_checks() if e.id == "eventsourcing_app.E030"]
        assert message in error.msg

    def test_a_model_listed_twice_is_an_error(self, settings) -> None:
        capture(settings, "shop.Supplier", {"model": "shop.Supplier"})

        (error,) = [e for e in run_checks() if e.id == "eventsourcing_app.E030"]
        assert "twice" in error.msg


@pytest.mark.django_db(transaction=True)
class TestTransactions:
    def test_rolled_back_create_update_and_delete_leave_no_event(self) -> None:
        supplier = Supplier.objects.create(name="Acme")

        def rename() -> None:
            loaded = Supplier.objects.get(pk=supplier.pk)
            loaded.name = "Renamed"
            loaded.save()

        for change in (
            lambda: Supplier.objects.create(name="Never"),
            rename,
            lambda: Supplier.objects.get(pk=supplier.pk).delete(),
        ):
            rolled_back(change)

        assert list(Supplier.objects.values_list("name", flat=True)) == ["Acme"]
        assert [e.event_type for e in supplier_events()] == ["shop.Supplier.created"]

    def test_a_save_rolled_back_is_compared_again_at_the_next_save(self) -> None:
        supplier = Supplier.objects.create(name="Acme")
        supplier.name = "Renamed"
        rolled_back(supplier.save)
        supplier.save()  # the row still says "Acme": this save changes it

        assert Supplier.objects.get(pk=supplier.pk).name == "Renamed"
        assert summary(supplier_events())[1:] == [
            ("updated", {"pk": supplier.pk, "fields": {"name": "Renamed"}, "previous": {"name": "Acme"}})
        ]

    def test_a_save_rolled_back_to_a_savepoint_is_compared_again(self) -> None:
        with transaction.atomic():
            supplier = Supplier.objects.create(name="Acme")
            supplier.active = False
            rolled_back(supplier.save)  # to the savepoint of this inner atomic block
            supplier.save()

        assert [e.data.get("previous") for e in supplier_events()] == [None, {"active": True}]

    def test_an_autocommit_save_and_its_event_are_one_transaction(self, settings) -> None:
        settings.EVENTSOURCING = {
            **settings.EVENTSOURCING,
            "APPEND_HOOKS": [
                *settings.EVENTSOURCING.get("APPEND_HOOKS", DEFAULTS["APPEND_HOOKS"]),
                "tests.test_outbox_capture.failing_hook",
            ],
        }
        with pytest.raises(Boom):
            Supplier.objects.create(name="Acme")  # no transaction of the caller's: autocommit

        assert not Supplier.objects.exists()
        assert supplier_events() == []

    def test_an_autocommit_delete_and_its_event_are_one_transaction(self, settings) -> None:
        supplier = Supplier.objects.create(name="Acme")
        settings.EVENTSOURCING = {
            **settings.EVENTSOURCING,
            "APPEND_HOOKS": ["tests.test_outbox_capture.failing_hook"],
        }
        with pytest.raises(Boom):
            supplier.delete()

        assert Supplier.objects.filter(pk=supplier.pk).exists()
        assert len(supplier_events()) == 1

    def test_committed_changes_are_recorded(self) -> None:
        with transaction.atomic():
            supplier = Supplier.objects.create(name="Acme")
            supplier.email = "a@acme.test"
            supplier.save()
        Supplier.objects.get(pk=supplier.pk).delete()

        assert [e.event_type for e in supplier_events(supplier.pk)] == SUPPLIER_TYPES
