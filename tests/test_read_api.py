"""GET /api/events/ and /api/streams/…: staff only, cursor pagination, filters, tenant scoping."""

from __future__ import annotations

import pytest

from eventsourcing_app.store import EventStore, NewEvent
from project.shop.events import StockAdded

pytestmark = pytest.mark.django_db


def append(stream_id: str, count: int = 1, **metadata: str) -> None:
    sku = stream_id.partition("-")[2]
    EventStore().append(
        stream_id, [NewEvent.of(StockAdded(sku=sku, quantity=1), metadata=metadata) for _ in range(count)]
    )


def results(client, url: str) -> list[dict]:
    response = client.get(url)
    assert response.status_code == 200, response.content
    return response.json()["results"]


class TestEvents:
    def test_ascending_by_position_with_every_field(self, staff_client) -> None:
        append("Inventory-A", 2, correlation_id="c-1")
        append("Inventory-B")
        events = results(staff_client, "/api/events/")
        assert [e["position"] for e in events] == sorted(e["position"] for e in events)
        assert set(events[0]) == {
            "position",
            "event_id",
            "stream_id",
            "version",
            "event_type",
            "schema_version",
            "data",
            "metadata",
            "recorded_at",
        }
        assert isinstance(events[0]["position"], int)
        assert isinstance(events[0]["version"], int)
        assert events[0]["data"] == {"sku": "A", "quantity": 1}
        assert events[0]["metadata"] == {"correlation_id": "c-1"}

    def test_cursor_pagination_moves_forward_through_everything(self, staff_client) -> None:
        for n in range(7):
            append(f"Inventory-P{n}")
        seen, url = [], "/api/events/?page_size=3"
        while url:
            page = staff_client.get(url).json()
            assert set(page) == {"next", "previous", "results"}
            seen.extend(e["position"] for e in page["results"])
            url = page["next"]
        assert len(seen) == 7
        assert seen == sorted(seen)

    @pytest.mark.parametrize(
        ("query", "expected_streams"),
        [
            ("event_type=StockAdded", {"Inventory-A", "Inventory-B", "Stock-C"}),
            ("event_type=Stock", set()),
            ("stream_id=Inventory-A", {"Inventory-A"}),
            ("stream_id=Inventory", set()),
            ("category=Stock", {"Stock-C"}),
            ("correlation_id=corr-b", {"Inventory-B"}),
        ],
    )
    def test_filters_match_exactly(self, staff_client, query: str, expected_streams: set[str]) -> None:
        append("Inventory-A", 2)
        append("Inventory-B", correlation_id="corr-b")
        append("Stock-C")
        assert {e["stream_id"] for e in results(staff_client, f"/api/events/?{query}")} == expected_streams

    def test_after_a_position(self, staff_client) -> None:
        append("Inventory-A", 3)
        first = results(staff_client, "/api/events/")[0]["position"]
        assert [e["version"] for e in results(staff_client, f"/api/events/?after={first}")] == [2, 3]

    def test_bad_filter_values_are_400(self, staff_client) -> None:
        response = staff_client.get("/api/events/?after=abc")
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
        assert staff_client.get("/api/events/?cursor=garbage").status_code == 404

    def test_no_n_plus_one(self, staff_client, django_assert_max_num_queries) -> None:
        for n in range(30):
            append(f"Inventory-Q{n}")
        with django_assert_max_num_queries(4):  # session/auth user + the page
            assert len(results(staff_client, "/api/events/")) == 30


class TestStreams:
    def test_list_detail_and_events(self, staff_client) -> None:
        append("Inventory-A", 3)
        append("Order-B")
        streams = results(staff_client, "/api/streams/")
        assert [(s["stream_id"], s["version"]) for s in streams] == [("Inventory-A", 3), ("Order-B", 1)]
        assert [s["stream_id"] for s in results(staff_client, "/api/streams/?category=Order")] == ["Order-B"]
        detail = staff_client.get("/api/streams/Inventory-A/").json()
        assert (detail["category"], detail["version"]) == ("Inventory", 3)
        assert [e["version"] for e in results(staff_client, "/api/streams/Inventory-A/events/")] == [1, 2, 3]

    def test_unknown_stream_is_404(self, staff_client) -> None:
        for url in ("/api/streams/Inventory-none/", "/api/streams/Inventory-none/events/"):
            response = staff_client.get(url)
            assert response.status_code == 404
            assert response["Content-Type"] == "application/problem+json"


class TestAccess:
    @pytest.mark.parametrize("url", ["/api/events/", "/api/streams/", "/api/streams/Inventory-A/"])
    def test_staff_only(self, client, plain_client, url: str) -> None:
        append("Inventory-A")
        assert client.get(url).status_code == 401
        assert plain_client.get(url).status_code == 403

    def test_tenants_see_only_their_own_streams(self, staff_client, settings) -> None:
        settings.EVENTSOURCING = {**settings.EVENTSOURCING, "TENANT_RESOLVER": "tests.test_read_api.staff_tenant"}
        append("Inventory-MINE", tenant_id="acme")
        append("Inventory-THEIRS", tenant_id="globex")
        assert {e["stream_id"] for e in results(staff_client, "/api/events/")} == {"Inventory-MINE"}
        assert {s["stream_id"] for s in results(staff_client, "/api/streams/")} == {"Inventory-MINE"}
        assert staff_client.get("/api/streams/Inventory-THEIRS/").status_code == 404
        assert staff_client.get("/api/streams/Inventory-THEIRS/events/").status_code == 404

    def test_superusers_without_a_tenant_see_everything(self, api_client) -> None:
        append("Inventory-MINE", tenant_id="acme")
        append("Inventory-THEIRS", tenant_id="globex")
        assert len(results(api_client, "/api/events/")) == 2


def staff_tenant(user) -> str | None:
    return "acme" if user.username == "staff" else None


def test_metrics_are_exposed_to_staff_only(staff_client, plain_client, api_client) -> None:
    api_client.post("/api/commands/AddStock/", data='{"sku": "S", "quantity": 1}', content_type="application/json")
    response = staff_client.get("/api/metrics/")
    assert response.status_code == 200
    assert b'eventsourcing_commands_total{command_type="AddStock",outcome="ok"}' in response.content
    assert plain_client.get("/api/metrics/").status_code == 403
