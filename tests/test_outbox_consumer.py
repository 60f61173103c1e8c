"""The receiving end of the outbox: a redelivered message has its effect once.

The effect in these tests is a row (a Group named after the message), so counting rows
counts effects.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import RequestFactory
from django.utils import timezone

from eventsourcing_app.models import ProcessedMessage
from eventsourcing_app.outbox.consumer import (
    WebhookReceiverView,
    cleanup_processed_messages,
    consume_once,
    handle_once,
)
from eventsourcing_app.outbox.publishers import OutgoingMessage
from eventsourcing_app.outbox.publishers.webhook import WebhookPublisher, sign
from eventsourcing_app.outbox.tasks import cleanup_processed_messages as cleanup_processed_messages_task
from tests.workers import killed_on_exit, release, results_of

SECRET = "receiver-secret"


def effects(prefix: str = "") -> int:
    return Group.objects.filter(name__startswith=prefix).count()


def deliver(message_id: str, consumer: str = "billing") -> bool:
    """One delivery: the effect happens inside handle_once, only when it is the first."""
    with handle_once(message_id, consumer=consumer) as first:
        if first:
            Group.objects.create(name=f"{consumer}-{message_id}")
    return first


@pytest.mark.django_db
def test_a_redelivered_message_has_its_effect_once() -> None:
    message_id = str(uuid.uuid4())

    assert deliver(message_id) is True
    assert deliver(message_id) is False
    assert deliver(message_id) is False

    assert effects("billing-") == 1
    assert ProcessedMessage.objects.filter(consumer="billing", message_id=message_id).count() == 1


@pytest.mark.django_db
def test_an_effect_that_fails_is_tried_again_on_redelivery() -> None:
    message_id = str(uuid.uuid4())

    def failing_effect() -> None:
        with handle_once(message_id, consumer="billing") as first:
            assert first
            Group.objects.create(name=f"billing-{message_id}")
            raise RuntimeError("the effect failed half way")

    with pytest.raises(RuntimeError, match="half way"):
        failing_effect()

    assert effects("billing-") == 0
    assert not ProcessedMessage.objects.exists()
    assert deliver(message_id) is True
    assert effects("billing-") == 1


@pytest.mark.django_db
def test_each_consumer_handles_a_message_once() -> None:
    message_id = uuid.uuid4()  # a UUID is accepted as it is

    assert deliver(str(message_id), consumer="billing") is True
    assert deliver(str(message_id), consumer="shipping") is True
    with handle_once(message_id, consumer="shipping") as first:
        assert first is False

    assert effects() == 2


@pytest.mark.django_db
def test_a_duplicate_inside_an_outer_transaction_leaves_it_usable() -> None:
    message_id = str(uuid.uuid4())
    deliver(message_id)

    with transaction.atomic():
        assert deliver(message_id) is False
        Group.objects.create(name="after-the-duplicate")  # the outer transaction is not broken

    assert effects("after-") == 1


@pytest.mark.django_db
def test_consume_once_decorates_a_handler_of_message_bodies() -> None:
    calls: list[str] = []

    @consume_once(consumer="mailer")
    def send_mail(body: dict[str, Any], recipient: str) -> str:
        calls.append(recipient)
        return f"sent to {recipient}"

    body = {"message_id": str(uuid.uuid4()), "event": {"event_type": "OrderConfirmed"}}

    assert send_mail(body, "alice@example.com") == "sent to alice@example.com"
    assert send_mail(body, "alice@example.com") is None
    assert calls == ["alice@example.com"]
    with pytest.raises(ValueError, match="message_id"):
        send_mail({"event": {}}, "bob@example.com")


@pytest.mark.django_db
def test_consume_once_with_a_key() -> None:
    seen: list[str] = []

    @consume_once(consumer="by-key", key=lambda message_id, **_: message_id)
    def handle(message_id: str, *, amount: int) -> None:
        seen.append(message_id)

    handle("m-1", amount=1)
    handle("m-1", amount=1)
    handle("m-2", amount=2)

    assert seen == ["m-1", "m-2"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("message_id", "consumer", "message"),
    [("", "c", "message_id"), ("x" * 201, "c", "message_id"), (None, "c", "message_id"), ("m", "", "consumer")],
)
def test_bad_ids_and_names_are_refused(message_id: Any, consumer: str, message: str) -> None:
    with pytest.raises(ValueError, match=message), handle_once(message_id, consumer=consumer):
        pass


@pytest.mark.django_db
def test_cleanup_forgets_old_ids_only() -> None:
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    deliver(old, consumer="billing")
    deliver(old, consumer="shipping")
    deliver(recent, consumer="billing")
    ProcessedMessage.objects.filter(message_id=old).update(processed_at=timezone.now() - timedelta(days=8))

    assert cleanup_processed_messages(older_than=timedelta(days=7), consumer="shipping") == 1
    assert cleanup_processed_messages(older_than=timedelta(days=7)) == 1
    assert cleanup_processed_messages(older_than=timedelta(days=7)) == 0

    assert list(ProcessedMessage.objects.values_list("message_id", flat=True)) == [recent]
    with handle_once(old, consumer="billing") as first:
        assert first  # forgotten: a redelivery this late counts as new
    with pytest.raises(ValueError, match="older_than"):
        cleanup_processed_messages(older_than=timedelta(days=-1))


@pytest.mark.django_db
def test_the_periodic_task_forgets_what_is_older_than_the_retention_setting(settings) -> None:
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    deliver(old, consumer="billing")
    deliver(recent, consumer="shipping")
    ProcessedMessage.objects.filter(message_id=old).update(processed_at=timezone.now() - timedelta(hours=3))
    settings.EVENTSOURCING = {**settings.EVENTSOURCING, "OUTBOX_CONSUMER_RETENTION_SECONDS": 2 * 3600}

    assert cleanup_processed_messages_task() == 1

    assert list(ProcessedMessage.objects.values_list("message_id", flat=True)) == [recent]
    assert "eventsourcing_app.cleanup_processed_messages" in {
        entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()
    }


def test_concurrent_redeliveries_in_processes_have_one_effect(run_python, tmp_path: Path) -> None:
    message_ids = [str(uuid.uuid4()) for _ in range(30)]
    procs = [run_python("tests.outbox_consumer_worker", str(tmp_path), *message_ids) for _ in range(3)]

    with killed_on_exit(procs):
        release(tmp_path, procs)
        results = results_of(procs, timeout=120)

    assert sum(result["firsts"] for result in results) == len(message_ids)
    assert effects("race-") == len(message_ids)
    assert ProcessedMessage.objects.filter(consumer="tests.race").count() == len(message_ids)


@pytest.fixture
def run_python(worker_env: dict[str, str]):
    """Start `python -m MODULE ARGS…` against the test database."""

    def start(module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=Path(__file__).resolve().parent.parent,
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return start


# ---------------------------------------------------------------- a webhook receiver
class OrderWebhook(WebhookReceiverView):
    """What a receiving service writes: its consumer name, its secret and the effect."""

    consumer = "tests.order-webhook"

    def get_secret(self) -> str:
        return SECRET

    def handle(self, body: dict[str, Any]) -> None:
        Group.objects.create(name=f"hook-{body['message_id']}")


def post(body: bytes, headers: dict[str, str]):
    request = RequestFactory().post("/hooks/orders/", data=body, content_type="application/json", headers=headers)
    return OrderWebhook.as_view()(request)


def signed_body(message_id: str | None = None) -> bytes:
    return json.dumps(
        {"message_id": message_id or str(uuid.uuid4()), "event": {"event_type": "OrderConfirmed"}}
    ).encode()


@pytest.mark.django_db
def test_webhook_receiver_handles_a_signed_message_once() -> None:
    body = signed_body()
    message_id = json.loads(body)["message_id"]

    first = post(body, {"X-Signature": sign(body, SECRET), "X-Message-ID": message_id})
    again = post(body, {"X-Signature": sign(body, SECRET).removeprefix("sha256=")})

    assert (first.status_code, json.loads(first.content)) == (200, {"message_id": message_id, "duplicate": False})
    assert (again.status_code, json.loads(again.content)) == (200, {"message_id": message_id, "duplicate": True})
    assert effects("hook-") == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("make", "status", "detail"),
    [
        (lambda body: (body, {"X-Signature": sign(body, "wrong secret")}), 403, "X-Signature"),
        (lambda body: (body, {}), 403, "X-Signature"),
        (lambda body: (body + b" ", {"X-Signature": sign(body, SECRET)}), 403, "X-Signature"),
        (lambda body: (b"not json", {"X-Signature": sign(b"not json", SECRET)}), 400, "not JSON"),
        (lambda body: (b"[1, 2]", {"X-Signature": sign(b"[1, 2]", SECRET)}), 400, "message_id"),
        (lambda body: (body, {"X-Signature": sign(body, SECRET), "X-Message-ID": "other"}), 400, "X-Message-ID"),
    ],
)
def test_webhook_receiver_refuses_what_it_cannot_trust(make, status: int, detail: str) -> None:
    body, headers = make(signed_body())

    response = post(body, headers)

    assert response.status_code == status
    assert response["Content-Type"] == "application/problem+json"
    problem = json.loads(response.content)
    assert problem["status"] == status
    assert detail in problem["detail"]
    assert effects("hook-") == 0


def test_webhook_publisher_to_a_live_receiver(live_server, settings, transactional_db: None) -> None:
    settings.ROOT_URLCONF = "tests.outbox_receiver_urls"
    publisher = WebhookPublisher(url=f"{live_server.url}/hooks/orders/", secret=SECRET)
    sent = OutgoingMessage(
        message_id=str(uuid.uuid4()),
        destination="orders-hook",
        event_type="OrderConfirmed",
        stream_id="Order-1",
        position=1,
        event_id=str(uuid.uuid4()),
        payload={"event_type": "OrderConfirmed", "data": {"order_id": "1"}},
    )

    assert publisher.publish_many([sent, sent]) == [None, None]  # a redelivery is accepted and skipped
    publisher.close()

    assert list(Group.objects.values_list("name", flat=True)) == [f"hook-{sent.message_id}"]
