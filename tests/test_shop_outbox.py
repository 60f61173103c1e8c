"""The shop's outbox, end to end over HTTP in the embedded mode: confirmed and cancelled orders leave the building.

Every order outcome becomes one outbox row per destination in the transaction
of its event; the on-commit nudge runs the processor in-process (no broker),
which runs the `shop.order_notification` task here and POSTs the signed
webhook to a real HTTP server. Tests commit for real (transactional_db).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from eventsourcing_app.models import OutboxMessage, OutboxStatus
from eventsourcing_app.outbox.publishers.webhook import verify_signature
from eventsourcing_app.testing import wait_until_caught_up
from project.shop.models import OrderNotification
from project.shop.outbox import NOTIFICATION_DESTINATION, WEBHOOK_DESTINATION, outbox_settings
from project.shop.tasks import order_notification

SECRET = "shop-test-secret"


@dataclass
class Receiver:
    """A webhook endpoint on a real socket: keeps each POST whose signature checks out."""

    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                if verify_signature(raw, self.headers.get("X-Signature"), SECRET):
                    found.received.append({"message_id_header": self.headers["X-Message-ID"], **json.loads(raw)})
                    status = 204
                else:
                    found.refused += 1
                    status = 403
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test reads what was received."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/orders/"
    yield found
    server.shutdown()
    server.server_close()


def shop_outbox(settings, **options: str) -> None:
    """The example project's routes, as project/settings.py builds them from SHOP_WEBHOOK_URL/SECRET."""
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, **outbox_settings(**options)}


def command(client, command_type: str, body: dict) -> dict:
    response = client.post(f"/api/commands/{command_type}/", body, format="json")
    assert response.status_code in (200, 201), response.content
    return response.json()


def confirmed_then_cancelled(client) -> str:
    """An order the saga confirms, then cancelled by its customer: one OrderConfirmed, one OrderCancelled."""
    command(client, "AddStock", {"sku": "SKU-OUT", "quantity": 5})
    body = {"customer_id": "ada", "items": [{"sku": "SKU-OUT", "quantity": 1, "unit_price": "10.00"}]}
    order_id = command(client, "PlaceOrder", body)["aggregate_id"]
    wait_until_caught_up()
    assert client.get(f"/api/orders/{order_id}/").json()["status"] == "confirmed"
    command(client, "CancelOrder", {"order_id": order_id, "reason": "changed my mind"})
    wait_until_caught_up()
    return order_id


def rows() -> dict[tuple[str, str], OutboxMessage]:
    return {(m.event_type, m.destination): m for m in OutboxMessage.objects.all()}


@pytest.mark.django_db(transaction=True)
def test_outcomes_go_to_the_task_and_the_signed_webhook(api_client, settings, receiver: Receiver) -> None:
    shop_outbox(settings, webhook_url=receiver.url, webhook_secret=SECRET)

    order_id = confirmed_then_cancelled(api_client)

    messages = rows()
    assert sorted(messages) == [
        ("OrderCancelled", NOTIFICATION_DESTINATION),
        ("OrderCancelled", WEBHOOK_DESTINATION),
        ("OrderConfirmed", NOTIFICATION_DESTINATION),
        ("OrderConfirmed", WEBHOOK_DESTINATION),
    ]
    assert {m.status for m in messages.values()} == {OutboxStatus.DELIVERED}
    assert {m.stream_id for m in messages.values()} == {f"Order-{order_id}"}

    assert receiver.refused == 0
    assert [(r["event"]["event_type"], r["event"]["data"]["order_id"]) for r in receiver.received] == [
        ("OrderConfirmed", order_id),
        ("OrderCancelled", order_id),
    ]
    for received in receiver.received:
        expected = messages[(received["event"]["event_type"], WEBHOOK_DESTINATION)]
        assert received["message_id"] == received["message_id_header"] == str(expected.message_id)

    notifications = {n.event_type: n for n in OrderNotification.objects.all()}
    assert sorted(notifications) == ["OrderCancelled", "OrderConfirmed"]
    for event_type, notification in notifications.items():
        assert str(notification.order_id) == order_id
        assert notification.message_id == messages[(event_type, NOTIFICATION_DESTINATION)].message_id
    assert notifications["OrderCancelled"].reason == "changed my mind"


@pytest.mark.django_db(transaction=True)
def test_without_a_webhook_url_only_the_task_is_a_destination(api_client, settings) -> None:
    shop_outbox(settings)

    order_id = confirmed_then_cancelled(api_client)

    assert sorted(rows()) == [
        ("OrderCancelled", NOTIFICATION_DESTINATION),
        ("OrderConfirmed", NOTIFICATION_DESTINATION),
    ]
    assert {m.status for m in rows().values()} == {OutboxStatus.DELIVERED}
    assert sorted(OrderNotification.objects.values_list("event_type", flat=True)) == [
        "OrderCancelled",
        "OrderConfirmed",
    ]
    assert {str(n.order_id) for n in OrderNotification.objects.all()} == {order_id}


@pytest.mark.django_db
def test_a_redelivered_message_is_recorded_once() -> None:
    body = {
        "message_id": "6f1c1c1e-0c7a-5d43-9a53-4d0b5f0c9d11",
        "destination": NOTIFICATION_DESTINATION,
        "event": {"event_type": "OrderCancelled", "data": {"order_id": "3f2a7c1e-5b9d-4e8f-a1c2-6d7e8f9a0b1c"}},
    }

    order_notification.apply(args=(body,), throw=True)
    order_notification.apply(args=(body,), throw=True)

    (notification,) = OrderNotification.objects.all()
    assert (str(notification.message_id), notification.event_type) == (body["message_id"], "OrderCancelled")


def test_a_webhook_url_needs_a_secret() -> None:
    with pytest.raises(ImproperlyConfigured, match="SHOP_WEBHOOK_SECRET"):
        outbox_settings(webhook_url="https://hooks.example.com/orders")
