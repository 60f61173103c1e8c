"""The outbox admin: messages listed with filters and search, read-only, changed only by the three actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from eventsourcing_app.models import OutboxMessage, OutboxStatus, ProcessedMessage
from eventsourcing_app.outbox.consumer import handle_once
from eventsourcing_app.store import EventStore
from project.shop.events import StockAdded

pytestmark = pytest.mark.django_db

MESSAGES_URL = "/admin/eventsourcing_app/outboxmessage/"
PROCESSED_URL = "/admin/eventsourcing_app/processedmessage/"
DESTINATIONS = {
    "audit": {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher"},
    "search": {"PUBLISHER": "eventsourcing_app.outbox.publishers.log.LogPublisher"},
}
ROUTES = [
    {"events": ["StockAdded"], "destination": "audit"},
    {"events": ["Stock*"], "destination": "search"},
]


@pytest.fixture
def outbox(settings) -> dict[str, OutboxMessage]:
    """Four messages of two events (two destinations each), then one made dead, one in backoff, one delivered."""
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "OUTBOX_DESTINATIONS": DESTINATIONS, "OUTBOX_ROUTES": ROUTES}
    store = EventStore()
    store.append("Inventory-SKU-A", [StockAdded(sku="SKU-A", quantity=1)])
    store.append("Inventory-SKU-B", [StockAdded(sku="SKU-B", quantity=2)])
    rows = {f"{m.stream_id[-1]}-{m.destination}": m for m in OutboxMessage.objects.all()}
    assert sorted(rows) == ["A-audit", "A-search", "B-audit", "B-search"]
    later = timezone.now() + timedelta(hours=1)
    OutboxMessage.objects.filter(pk=rows["A-audit"].pk).update(
        status=OutboxStatus.DEAD, attempts=10, last_error="ConnectionError: " + "refused " * 20
    )
    OutboxMessage.objects.filter(pk=rows["A-search"].pk).update(attempts=2, available_at=later, last_error="HTTP 503")
    OutboxMessage.objects.filter(pk=rows["B-search"].pk).update(
        status=OutboxStatus.DELIVERED, attempts=1, delivered_at=timezone.now()
    )
    return {name: OutboxMessage.objects.get(pk=row.pk) for name, row in rows.items()}


def staff(*codenames: str) -> Client:
    user = User.objects.create_user("operator", password="x", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def listed(response) -> set[int]:
    return {row.pk for row in response.context["cl"].result_list}


def act(client: Client, action: str, *rows: OutboxMessage):
    data = {"action": action, "_selected_action": [row.pk for row in rows]}
    return client.post(MESSAGES_URL, data, follow=True)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


class TestList:
    def test_lists_every_message_newest_first_with_its_state(self, admin_client: Client, outbox) -> None:
        response = admin_client.get(MESSAGES_URL)

        assert response.status_code == 200
        assert [row.pk for row in response.context["cl"].result_list] == sorted(
            (row.pk for row in outbox.values()), reverse=True
        )
        content = response.content.decode()
        assert "Inventory-SKU-A" in content
        assert "HTTP 503" in content
        assert "ConnectionError: refused" in content
        assert "refused " * 20 not in content  # the list shows the start of a long error

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("status=dead", {"A-audit"}),
            ("status=pending", {"A-search", "B-audit"}),
            ("destination=search", {"A-search", "B-search"}),
            ("event_type=StockAdded&status=delivered", {"B-search"}),
        ],
    )
    def test_filters(self, admin_client: Client, outbox, query: str, expected: set[str]) -> None:
        response = admin_client.get(f"{MESSAGES_URL}?{query}")

        assert listed(response) == {outbox[name].pk for name in expected}

    def test_search_by_stream_id_message_id_or_event_id(self, admin_client: Client, outbox) -> None:
        a_audit = outbox["A-audit"]

        assert listed(admin_client.get(MESSAGES_URL, {"q": "Inventory-SKU-B"})) == {
            outbox["B-audit"].pk,
            outbox["B-search"].pk,
        }
        assert listed(admin_client.get(MESSAGES_URL, {"q": str(a_audit.message_id)})) == {a_audit.pk}
        assert listed(admin_client.get(MESSAGES_URL, {"q": str(a_audit.event_id)})) == {
            a_audit.pk,
            outbox["A-search"].pk,
        }

    def test_detail_is_read_only_with_the_payload_indented(self, admin_client: Client, outbox) -> None:
        message = outbox["A-audit"]
        url = f"{MESSAGES_URL}{message.pk}/change/"

        response = admin_client.get(url)

        assert response.status_code == 200
        content = response.content.decode()
        assert '<pre class="eventsourcing-json">' in content
        assert "&quot;sku&quot;: &quot;SKU-A&quot;" in content
        assert admin_client.post(url, {"status": "pending"}).status_code == 403
        assert admin_client.get(f"{MESSAGES_URL}add/").status_code == 403
        assert admin_client.post(f"{MESSAGES_URL}{message.pk}/delete/", {"post": "yes"}).status_code == 403
        assert OutboxMessage.objects.get(pk=message.pk).status == OutboxStatus.DEAD

    def test_offers_only_its_own_actions(self, admin_client: Client, outbox) -> None:
        response = admin_client.get(MESSAGES_URL)

        choices = [value for value, _ in response.context["action_form"].fields["action"].choices if value]
        assert choices == ["retry_now_selected", "requeue_dead_selected", "discard_selected"]


class TestActions:
    def test_retry_now_makes_pending_messages_due(self, admin_client: Client, outbox) -> None:
        before = timezone.now()
        response = act(admin_client, "retry_now_selected", outbox["A-search"], outbox["A-audit"])

        assert messages_of(response) == ["1 of 2 selected messages made due now."]
        retried = OutboxMessage.objects.get(pk=outbox["A-search"].pk)
        assert retried.available_at <= timezone.now()
        assert retried.available_at >= before
        assert OutboxMessage.objects.get(pk=outbox["A-audit"].pk).status == OutboxStatus.DEAD

    def test_requeue_dead_gives_dead_letters_fresh_attempts(self, admin_client: Client, outbox) -> None:
        response = act(admin_client, "requeue_dead_selected", outbox["A-audit"], outbox["B-search"])

        assert messages_of(response) == ["1 of 2 selected messages requeued."]
        requeued = OutboxMessage.objects.get(pk=outbox["A-audit"].pk)
        assert (requeued.status, requeued.attempts) == (OutboxStatus.PENDING, 0)
        assert OutboxMessage.objects.get(pk=outbox["B-search"].pk).status == OutboxStatus.DELIVERED

    def test_discard_gives_up_on_pending_and_dead_messages(self, admin_client: Client, outbox) -> None:
        response = act(admin_client, "discard_selected", *outbox.values())

        assert messages_of(response) == ["3 of 4 selected messages discarded."]
        assert dict(OutboxMessage.objects.values_list("pk", "status")) == {
            outbox["A-audit"].pk: OutboxStatus.DISCARDED,
            outbox["A-search"].pk: OutboxStatus.DISCARDED,
            outbox["B-audit"].pk: OutboxStatus.DISCARDED,
            outbox["B-search"].pk: OutboxStatus.DELIVERED,
        }

    def test_an_action_that_changes_nothing_says_so(self, admin_client: Client, outbox) -> None:
        response = act(admin_client, "requeue_dead_selected", outbox["B-search"])

        assert [(m.level_tag, str(m)) for m in response.context["messages"]] == [
            ("warning", "0 of 1 selected message requeued.")
        ]


class TestPermissions:
    def test_staff_with_only_the_view_permission_see_the_list_but_cannot_act(self, outbox) -> None:
        client = staff("view_outboxmessage")

        response = client.get(MESSAGES_URL)
        assert response.status_code == 200
        assert response.context["action_form"] is None

        act(client, "discard_selected", outbox["B-audit"])
        assert OutboxMessage.objects.get(pk=outbox["B-audit"].pk).status == OutboxStatus.PENDING

    def test_staff_with_the_change_permission_can_act(self, outbox) -> None:
        client = staff("view_outboxmessage", "change_outboxmessage")

        response = act(client, "discard_selected", outbox["B-audit"])

        assert messages_of(response) == ["1 of 1 selected message discarded."]
        assert OutboxMessage.objects.get(pk=outbox["B-audit"].pk).status == OutboxStatus.DISCARDED
        assert client.get(f"{MESSAGES_URL}{outbox['B-audit'].pk}/change/").status_code == 200
        assert client.post(f"{MESSAGES_URL}{outbox['B-audit'].pk}/change/", {}).status_code == 403

    def test_non_staff_are_sent_to_the_login_page(self, outbox) -> None:
        user = User.objects.create_user("customer", password="x")
        user.user_permissions.set(Permission.objects.filter(codename="change_outboxmessage"))
        client = Client()
        client.force_login(user)

        response = client.post(MESSAGES_URL, {"action": "discard_selected", "_selected_action": [outbox["B-audit"].pk]})

        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]
        assert OutboxMessage.objects.get(pk=outbox["B-audit"].pk).status == OutboxStatus.PENDING


class TestProcessedMessages:
    def test_listed_read_only(self, admin_client: Client) -> None:
        with handle_once("m-1", consumer="billing") as first:
            assert first
        processed = ProcessedMessage.objects.get()

        response = admin_client.get(PROCESSED_URL, {"q": "m-1"})

        assert listed(response) == {processed.pk}
        assert "billing" in response.content.decode()
        assert admin_client.get(f"{PROCESSED_URL}add/").status_code == 403
        assert admin_client.post(f"{PROCESSED_URL}{processed.pk}/change/", {}).status_code == 403
        assert admin_client.post(f"{PROCESSED_URL}{processed.pk}/delete/", {"post": "yes"}).status_code == 403
