"""Query counts of dispatching commands: constant in the number of order lines (no N+1)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from eventsourcing_app.apps import create_command_permissions
from eventsourcing_app.commands import command_registry, dispatch
from project.shop.commands import PlaceOrder

pytestmark = pytest.mark.django_db


def place_order_queries(lines: int) -> list[str]:
    items = [{"sku": f"SKU-{n}", "quantity": 1, "unit_price": "2.50"} for n in range(lines)]
    with CaptureQueriesContext(connection) as captured:
        dispatch(PlaceOrder(customer_id="c", items=items))
    return [query["sql"] for query in captured.captured_queries]


def test_place_order_runs_a_fixed_number_of_queries() -> None:
    one, many = place_order_queries(1), place_order_queries(40)
    assert len(one) == len(many)
    writes = [sql for sql in many if sql.startswith(("WITH", "INSERT", "UPDATE"))]
    assert len(writes) == (1 if connection.vendor == "postgresql" else 2)  # one CTE, or stream + events
    # The test's transaction turns the command's into a savepoint (and SQLite's append adds one):
    # savepoint(s), the append, release(s).
    assert len(many) == (3 if connection.vendor == "postgresql" else 6)


def test_every_command_type_has_a_permission() -> None:
    create_command_permissions()
    codenames = set(Permission.objects.filter(codename__startswith="dispatch_").values_list("codename", flat=True))
    assert {f"dispatch_{name.lower()}" for name in command_registry.names()} <= codenames
    create_command_permissions()  # idempotent
    assert Permission.objects.filter(codename="dispatch_placeorder").count() == 1
