"""`GET /api/projections/`: each async projection's status, position, lag and last error, for staff only."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import pytest
from rest_framework.test import APIClient

from eventsourcing_app.projections import SKIP, STOP, Projection, ProjectionRunner, projection_registry
from eventsourcing_app.store import DomainEvent, EventStore, RecordedEvent
from project.shop.events import StockAdded

pytestmark = pytest.mark.django_db

URL = "/api/projections/"
FIELDS = {
    "name",
    "status",
    "position",
    "head",
    "lag",
    "last_error",
    "failed_position",
    "dead_letters",
    "updated_at",
}


@dataclass(frozen=True)
class ApiProbeRecorded(DomainEvent):
    """An event the test projections refuse when `ok` is false."""

    ok: bool


class _Picky(Projection):
    event_types = ("ApiProbeRecorded",)

    def handle_batch(self, events: list[RecordedEvent]) -> None:
        for event in events:
            if not event.data.ok:
                raise ValueError("not ok")


class StoppingProbe(_Picky):
    name = "api_stopping_probe"
    on_error = STOP


class SkippingProbe(_Picky):
    name = "api_skipping_probe"
    on_error = SKIP


@pytest.fixture
def probes() -> dict[str, Projection]:
    """Both probes, registered for the test only."""
    registered = {cls.name: cls() for cls in (StoppingProbe, SkippingProbe)}
    for name, projection in registered.items():
        projection_registry.register(name, projection)
    yield registered
    for name in registered:
        projection_registry.unregister(name)


def listed(client: APIClient) -> dict[str, dict]:
    response = client.get(URL)
    assert response.status_code == 200
    return {row["name"]: row for row in response.json()}


def test_only_staff_may_read_it(client, plain_client: APIClient) -> None:
    for response, status in ((client.get(URL), 401), (plain_client.get(URL), 403)):
        assert response.status_code == status
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["status"] == status


def test_lists_every_async_projection_with_its_lag(staff_client: APIClient, event_store: EventStore) -> None:
    event_store.append("Inventory-SKU-A", [StockAdded(sku="SKU-A", quantity=1), StockAdded(sku="SKU-A", quantity=2)])

    response = staff_client.get(URL)

    assert response["Content-Type"] == "application/json"
    rows = response.json()
    assert [row["name"] for row in rows] == ["inventory_levels", "order_summary"]
    assert all(set(row) == FIELDS for row in rows)
    assert rows[0] == {
        "name": "inventory_levels",
        "status": "running",
        "position": 0,
        "head": event_store.head_position(),
        "lag": 2,
        "last_error": "",
        "failed_position": None,
        "dead_letters": 0,
        "updated_at": None,
    }
    assert rows[1]["lag"] == 0


def test_a_caught_up_projection(staff_client: APIClient, event_store: EventStore) -> None:
    event_store.append("Inventory-SKU-A", [StockAdded(sku="SKU-A", quantity=1)])
    ProjectionRunner(projection_registry.lookup("inventory_levels")).run()

    row = listed(staff_client)["inventory_levels"]

    assert (row["position"], row["head"], row["lag"]) == (event_store.head_position(),) * 2 + (0,)
    assert datetime.fromisoformat(row["updated_at"].replace("Z", "+00:00")).tzinfo is not None


def test_a_failed_projection_shows_its_error_and_position(
    staff_client: APIClient, event_store: EventStore, probes: dict[str, Projection]
) -> None:
    recorded = event_store.append("Probe-1", [ApiProbeRecorded(ok=True), ApiProbeRecorded(ok=False)]).events
    ProjectionRunner(probes["api_stopping_probe"]).run()

    row = listed(staff_client)["api_stopping_probe"]

    assert row["status"] == "failed"
    assert row["failed_position"] == recorded[1].position
    assert row["position"] == recorded[0].position
    assert row["last_error"] == "ValueError: not ok"
    assert row["lag"] == 1


def test_skipped_events_are_counted_as_dead_letters(
    staff_client: APIClient, event_store: EventStore, probes: dict[str, Projection]
) -> None:
    event_store.append("Probe-1", [ApiProbeRecorded(ok=False), ApiProbeRecorded(ok=True), ApiProbeRecorded(ok=False)])
    ProjectionRunner(probes["api_skipping_probe"]).run()

    row = listed(staff_client)["api_skipping_probe"]

    assert (row["status"], row["lag"], row["dead_letters"], row["last_error"]) == ("running", 0, 2, "")


def test_is_in_the_openapi_schema(api_client: APIClient) -> None:
    response = api_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    operation = json.loads(response.content)["paths"]["/api/projections/"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
