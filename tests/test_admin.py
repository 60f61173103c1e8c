"""The read-only event store admin: lists, filters, search, detail pages, links, permissions, query counts."""

from __future__ import annotations

import html
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from eventsourcing_app.admin.store import EstimatedCountPaginator
from eventsourcing_app.models import Event, Snapshot, Stream
from project.shop.events import StockAdded
from tests.factories import OrderLineFactory, OrderPlacedFactory, StoredEventFactory, StreamFactory

pytestmark = pytest.mark.django_db

EVENTS_URL = "/admin/eventsourcing_app/event/"
STREAMS_URL = "/admin/eventsourcing_app/stream/"


def _positions(response) -> list[int]:
    """Positions of the events listed on an event changelist page."""
    return sorted(event.position for event in response.context["cl"].result_list)


def _stream_ids(response) -> list[str]:
    return sorted(stream.stream_id for stream in response.context["cl"].result_list)


@pytest.fixture
def order_event() -> Event:
    lines = [
        OrderLineFactory(sku="SKU-A", quantity=2, unit_price=Decimal("19.99")),
        OrderLineFactory(sku="SKU-B", quantity=1, unit_price=Decimal("5.10")),
    ]
    order = OrderPlacedFactory(order_id="0b8f5c1e-0000-4000-8000-000000000001", items=lines)
    return StoredEventFactory(
        stream_id=f"Order-{order.order_id}", event=order, metadata={"correlation_id": "corr-1", "user_id": 7}
    )


@pytest.fixture
def inventory_stream() -> Stream:
    return StreamFactory(stream_id="Inventory-SKU-A", events=3)


@pytest.fixture
def log(order_event: Event, inventory_stream: Stream) -> dict[str, list[int]]:
    """One Order stream (1 event) and one Inventory stream (3 events); positions by category."""
    return {
        "Order": [order_event.position],
        "Inventory": list(Event.objects.filter(stream_id="Inventory-SKU-A").values_list("position", flat=True)),
    }


def test_the_admin_uses_the_stock_login(client: Client) -> None:
    response = client.get(EVENTS_URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    assert client.get("/admin/login/").status_code == 200


def test_a_non_staff_user_is_sent_to_the_login(client: Client, log: dict[str, list[int]]) -> None:
    client.force_login(User.objects.create_user("visitor", password="x"))
    for url in (EVENTS_URL, STREAMS_URL, f"{EVENTS_URL}{log['Order'][0]}/change/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")


def test_staff_with_only_the_view_permission_can_browse(client: Client, log: dict[str, list[int]]) -> None:
    user = User.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_event", "view_stream"]))
    client.force_login(user)
    assert client.get(EVENTS_URL).status_code == 200
    assert client.get(f"{EVENTS_URL}{log['Order'][0]}/change/").status_code == 200
    assert client.get(STREAMS_URL).status_code == 200


class TestStreamChangelist:
    def test_lists_streams_most_recently_changed_first(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(STREAMS_URL)
        assert response.status_code == 200
        assert [s.stream_id for s in response.context["cl"].result_list] == [
            "Inventory-SKU-A",
            "Order-0b8f5c1e-0000-4000-8000-000000000001",
        ]

    def test_category_filter(self, admin_client: Client, log: dict) -> None:
        cl = admin_client.get(STREAMS_URL).context["cl"]
        choices = [choice["display"] for choice in cl.filter_specs[0].choices(cl)]
        assert choices == ["All", "Inventory", "Order"]

        response = admin_client.get(STREAMS_URL, {"category": "Order"})
        assert response.status_code == 200
        assert _stream_ids(response) == ["Order-0b8f5c1e-0000-4000-8000-000000000001"]

    def test_search_by_stream_id_prefix(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(STREAMS_URL, {"q": "Inventory-"})
        assert response.status_code == 200
        assert _stream_ids(response) == ["Inventory-SKU-A"]
        # A prefix search, not a substring one.
        assert _stream_ids(admin_client.get(STREAMS_URL, {"q": "SKU-A"})) == []

    def test_links_each_stream_to_its_events(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(STREAMS_URL)
        link = f"{EVENTS_URL}?{urlencode({'stream__stream_id__exact': 'Inventory-SKU-A'})}"
        assert f'href="{link}"' in response.content.decode()
        assert "3 events" in response.content.decode()

        events = admin_client.get(link)
        assert events.status_code == 200
        assert _positions(events) == sorted(log["Inventory"])

    def test_detail_is_read_only_and_links_to_the_events(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(f"{STREAMS_URL}Inventory-SKU-A/change/")
        assert response.status_code == 200
        content = response.content.decode()
        assert f"{EVENTS_URL}?{urlencode({'stream__stream_id__exact': 'Inventory-SKU-A'})}" in content
        assert 'name="_save"' not in content


class TestEventChangelist:
    def test_lists_events_newest_first(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(EVENTS_URL)
        assert response.status_code == 200
        listed = [event.position for event in response.context["cl"].result_list]
        assert listed == sorted(log["Order"] + log["Inventory"], reverse=True)

    def test_event_type_filter(self, admin_client: Client, log: dict) -> None:
        cl = admin_client.get(EVENTS_URL).context["cl"]
        type_filter = next(spec for spec in cl.filter_specs if spec.parameter_name == "event_type")
        assert [choice["display"] for choice in type_filter.choices(cl)] == ["All", "OrderPlaced", "StockAdded"]

        response = admin_client.get(EVENTS_URL, {"event_type": "OrderPlaced"})
        assert response.status_code == 200
        assert _positions(response) == log["Order"]

    def test_category_filter(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(EVENTS_URL, {"category": "Inventory"})
        assert response.status_code == 200
        assert _positions(response) == sorted(log["Inventory"])

    def test_recorded_date_filter(self, admin_client: Client, log: dict) -> None:
        today = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        recent = {"recorded_at__gte": str(today - timedelta(days=1)), "recorded_at__lt": str(today + timedelta(days=2))}
        response = admin_client.get(EVENTS_URL, recent)
        assert response.status_code == 200
        assert _positions(response) == sorted(log["Order"] + log["Inventory"])

        last_year = {
            "recorded_at__gte": str(today - timedelta(days=400)),
            "recorded_at__lt": str(today - timedelta(days=1)),
        }
        assert _positions(admin_client.get(EVENTS_URL, last_year)) == []

    def test_search_by_stream_id_prefix_and_exact(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(EVENTS_URL, {"q": "Order-"})
        assert response.status_code == 200
        assert _positions(response) == log["Order"]
        assert _positions(admin_client.get(EVENTS_URL, {"q": "Inventory-SKU-A"})) == sorted(log["Inventory"])
        # Prefix, not substring: the middle of a stream id finds nothing.
        assert _positions(admin_client.get(EVENTS_URL, {"q": "SKU-A"})) == []

    def test_search_by_event_id(self, admin_client: Client, order_event: Event, inventory_stream: Stream) -> None:
        response = admin_client.get(EVENTS_URL, {"q": str(order_event.event_id)})
        assert response.status_code == 200
        assert _positions(response) == [order_event.position]

    def test_filter_and_search_combine(self, admin_client: Client, log: dict) -> None:
        response = admin_client.get(EVENTS_URL, {"q": "Inventory-", "event_type": "OrderPlaced"})
        assert response.status_code == 200
        assert _positions(response) == []

    def test_links_each_event_to_its_stream(self, admin_client: Client, log: dict) -> None:
        content = admin_client.get(EVENTS_URL).content.decode()
        assert f'href="{STREAMS_URL}Inventory-SKU-A/change/"' in content

    def test_links_reach_streams_whose_ids_need_escaping(self, admin_client: Client) -> None:
        stream_id = "Odd-a_1A/b"
        StoredEventFactory(stream_id=stream_id)
        url = reverse("admin:eventsourcing_app_stream_change", args=[quote(stream_id)])
        assert f'href="{url}"' in admin_client.get(EVENTS_URL).content.decode()
        response = admin_client.get(url)
        assert response.status_code == 200
        assert response.context["original"].stream_id == stream_id


class TestEventDetail:
    def test_shows_data_and_metadata_as_indented_json(self, admin_client: Client, order_event: Event) -> None:
        response = admin_client.get(f"{EVENTS_URL}{order_event.position}/change/")
        assert response.status_code == 200
        content = response.content.decode()
        # Decimals are stored as strings; nested objects are indented one level further; keys are sorted.
        text = html.unescape(content)
        first_line = '\n    {\n      "quantity": 2,\n      "sku": "SKU-A",\n      "unit_price": "19.99"\n    },'
        assert f'\n  "items": [{first_line}' in text
        assert '\n  "total": "45.08"\n}</pre>' in text
        assert '<pre class="eventsourcing-json">{\n  "correlation_id": "corr-1",' in text
        assert str(order_event.event_id) in content

    def test_links_to_its_stream(self, admin_client: Client, order_event: Event) -> None:
        content = admin_client.get(f"{EVENTS_URL}{order_event.position}/change/").content.decode()
        assert f'href="{STREAMS_URL}{order_event.stream_id}/change/"' in content

    def test_escapes_stored_markup(self, admin_client: Client) -> None:
        event = StoredEventFactory(event=StockAdded(sku="<script>alert(1)</script>", quantity=1))
        content = admin_client.get(f"{EVENTS_URL}{event.position}/change/").content.decode()
        assert "<script>alert(1)</script>" not in content
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in content

    def test_has_no_form_to_submit(self, admin_client: Client, order_event: Event) -> None:
        content = admin_client.get(f"{EVENTS_URL}{order_event.position}/change/").content.decode()
        assert 'name="_save"' not in content
        assert 'name="_continue"' not in content
        assert "/delete/" not in content


class TestNothingCanBeWritten:
    @pytest.mark.parametrize("url", [EVENTS_URL, STREAMS_URL, "/admin/eventsourcing_app/snapshot/"])
    def test_add_is_forbidden(self, admin_client: Client, url: str) -> None:
        assert admin_client.get(f"{url}add/").status_code == 403
        assert admin_client.post(f"{url}add/", {"stream": "X-1"}).status_code == 403

    def test_posting_to_the_event_change_view_is_forbidden(self, admin_client: Client, order_event: Event) -> None:
        response = admin_client.post(
            f"{EVENTS_URL}{order_event.position}/change/", {"event_type": "Tampered", "data": "{}", "version": 9}
        )
        assert response.status_code == 403
        stored = Event.objects.get(position=order_event.position)
        assert (stored.event_type, stored.version, stored.data) == ("OrderPlaced", 1, order_event.data)

    def test_posting_to_the_stream_change_view_is_forbidden(self, admin_client: Client, inventory_stream) -> None:
        response = admin_client.post(f"{STREAMS_URL}Inventory-SKU-A/change/", {"version": 99, "category": "X"})
        assert response.status_code == 403
        assert Stream.objects.get(stream_id="Inventory-SKU-A").version == 3

    def test_delete_is_forbidden(self, admin_client: Client, order_event: Event) -> None:
        event_url = f"{EVENTS_URL}{order_event.position}/delete/"
        stream_url = f"{STREAMS_URL}{order_event.stream_id}/delete/"
        for url in (event_url, stream_url):
            assert admin_client.get(url).status_code == 403
            assert admin_client.post(url, {"post": "yes"}).status_code == 403
        assert Event.objects.filter(position=order_event.position).exists()

    @pytest.mark.parametrize("model", [Event, Stream, Snapshot])
    def test_there_are_no_actions(self, rf, admin_user: User, model: type) -> None:
        request = rf.get("/")
        request.user = admin_user
        assert "delete_selected" not in admin.site._registry[model].get_actions(request)

    def test_bulk_delete_action_is_refused(self, admin_client: Client, order_event: Event) -> None:
        content = admin_client.get(EVENTS_URL).content.decode()
        assert "delete_selected" not in content
        response = admin_client.post(
            EVENTS_URL, {"action": "delete_selected", "_selected_action": [order_event.position], "post": "yes"}
        )
        assert "delete_selected" not in response.content.decode()
        assert Event.objects.filter(position=order_event.position).exists()


class TestQueryCount:
    """The lists run a fixed number of queries, whatever the number of rows (no query per row)."""

    @staticmethod
    def _count_queries(client: Client, url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    @pytest.mark.parametrize("url", [EVENTS_URL, STREAMS_URL, "/admin/eventsourcing_app/snapshot/"])
    def test_list_queries_do_not_grow_with_rows(self, admin_client: Client, django_assert_max_num_queries, url) -> None:
        StoredEventFactory.create_batch(3)
        few = self._count_queries(admin_client, url)
        StoredEventFactory.create_batch(27, event=StockAdded(sku="SKU-2", quantity=2))
        StreamFactory(stream_id="Order-many", events=5)
        with django_assert_max_num_queries(few):
            assert admin_client.get(url).status_code == 200

    def test_event_list_does_not_load_payloads(self, admin_client: Client, log: dict) -> None:
        with CaptureQueriesContext(connection) as captured:
            admin_client.get(EVENTS_URL)
        listing = [q["sql"] for q in captured if 'FROM "eventsourcing_event" ORDER BY' in q["sql"]]
        assert listing
        assert all('"eventsourcing_event"."data"' not in sql for sql in listing)


class TestEstimatedCountPaginator:
    def test_counts_exactly_below_the_threshold(self, log: dict) -> None:
        assert EstimatedCountPaginator(Event.objects.order_by("position"), 100).count == 4

    def test_counts_exactly_when_filtered(self, log: dict, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", -2)
        paginator = EstimatedCountPaginator(Event.objects.filter(category="Inventory").order_by("position"), 100)
        assert paginator.count == 3

    @pytest.mark.postgres
    def test_uses_the_planner_estimate_for_a_large_unfiltered_table(
        self, log: dict, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE eventsourcing_event")
            cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = 'eventsourcing_event'::regclass")
            estimate = cursor.fetchone()[0]
        monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 0)
        with CaptureQueriesContext(connection) as captured:
            assert EstimatedCountPaginator(Event.objects.order_by("position"), 100).count == estimate
        assert not any("COUNT(" in q["sql"].upper() for q in captured)
