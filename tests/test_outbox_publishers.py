"""The shipped outbox publishers, each against the real service on this machine.

Every test uses its own stream key / queue / subject (a uuid in the name), so parallel runs
never collide; a test whose service is unreachable is skipped, saying which.
"""

from __future__ import annotations

import asyncio
import dataclasses
import decimal
import json
import logging
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from celery import shared_task
from django.core.exceptions import ImproperlyConfigured

from eventsourcing_app.exceptions import PublishError
from eventsourcing_app.models import OutboxMessage, OutboxStatus
from eventsourcing_app.outbox import OutboxProcessor, requeue_dead
from eventsourcing_app.outbox.publishers import OutgoingMessage
from eventsourcing_app.outbox.publishers.celery import CeleryTaskPublisher
from eventsourcing_app.outbox.publishers.log import LogPublisher
from eventsourcing_app.outbox.publishers.webhook import WebhookPublisher, sign, verify_signature
from eventsourcing_app.store import DomainEvent

REDIS_URL = os.environ.get("OUTBOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/6")
AMQP_URL = os.environ.get("OUTBOX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
NATS_URL = os.environ.get("OUTBOX_TEST_NATS_URL", "nats://127.0.0.1:4222")
SECRET = "s3cret-for-tests"


def message(n: int = 1, *, stream_id: str = "Order-1", event_type: str = "OrderConfirmed", **payload: Any):
    """An OutgoingMessage as the processor builds them (payload: the event as a dict)."""
    event_id = str(uuid.uuid4())
    return OutgoingMessage(
        message_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event_id}/test")),
        destination="test",
        event_type=event_type,
        stream_id=stream_id,
        position=n,
        event_id=event_id,
        payload={"event_id": event_id, "event_type": event_type, "version": n, "data": {"n": n, **payload}},
        attempt=1,
    )


# ---------------------------------------------------------------- webhook
@dataclass
class Receiver:
    """A local HTTP server recording each POST and answering from a script of responses."""

    statuses: list[int] = field(default_factory=list)  # one per request, then 200
    delay: float = 0.0
    body: bytes = b'{"ok": true}'
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    client_ports: list[int] = field(default_factory=list)
    url: str = ""

    def answer(self) -> int:
        return self.statuses.pop(0) if self.statuses else 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real receivers

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((dict(self.headers.items()), body))
            state.client_ports.append(self.client_address[1])
            time.sleep(state.delay)
            status = state.answer()
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/orders"
    yield state
    server.shutdown()
    server.server_close()


def test_webhook_posts_the_body_signed_with_the_message_id(receiver: Receiver) -> None:
    publisher = WebhookPublisher(url=receiver.url, secret=SECRET, headers={"Authorization": "Bearer abc"})
    sent = message(7, total="12.50")

    publisher.publish(sent)
    publisher.close()

    [(headers, body)] = receiver.requests
    assert body == sent.body_bytes()
    document = json.loads(body)
    assert document["message_id"] == sent.message_id
    assert document["event"] == sent.payload
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Message-ID"] == sent.message_id
    assert headers["Authorization"] == "Bearer abc"
    assert headers["X-Signature"].startswith("sha256=")
    assert verify_signature(body, headers["X-Signature"], SECRET)
    assert not verify_signature(body, headers["X-Signature"], "another secret")


def test_webhook_headers_cannot_replace_the_signature(receiver: Receiver) -> None:
    publisher = WebhookPublisher(
        url=receiver.url, secret=SECRET, headers={"X-Signature": "sha256=forged", "X-Message-ID": "forged"}
    )
    sent = message()

    publisher.publish(sent)

    [(headers, body)] = receiver.requests
    assert headers["X-Message-ID"] == sent.message_id
    assert verify_signature(body, headers["X-Signature"], SECRET)


def test_webhook_posts_a_batch_in_order_over_one_connection(receiver: Receiver) -> None:
    publisher = WebhookPublisher(url=receiver.url, secret=SECRET)
    batch = [message(n) for n in range(5)]

    results = publisher.publish_many(batch)

    assert results == [None] * 5
    assert [headers["X-Message-ID"] for headers, _ in receiver.requests] == [m.message_id for m in batch]
    assert len(set(receiver.client_ports)) == 1  # the pooled connection was kept alive


@pytest.mark.parametrize("status", [201, 202, 204, 299])
def test_webhook_any_2xx_is_delivered(receiver: Receiver, status: int) -> None:
    receiver.statuses = [status]
    receiver.body = b"" if status == 204 else receiver.body

    WebhookPublisher(url=receiver.url, secret=SECRET).publish(message())

    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [500, 503, 404, 400, 302, 301])
def test_webhook_non_2xx_raises_with_the_status(receiver: Receiver, status: int) -> None:
    receiver.statuses = [status]
    receiver.body = b"<html>" + b"x" * 5000 + b"</html>"

    with pytest.raises(PublishError, match=f"answered {status}") as caught:
        WebhookPublisher(url=receiver.url, secret=SECRET).publish(message())

    assert len(str(caught.value)) < 400  # the error page is cut, not copied whole
    assert len(receiver.requests) == 1  # a redirect is not followed


def test_webhook_read_timeout_raises(receiver: Receiver) -> None:
    receiver.delay = 2.0
    publisher = WebhookPublisher(url=receiver.url, secret=SECRET, timeout=(1.0, 0.3))

    started = time.monotonic()
    with pytest.raises(PublishError, match="timed out"):
        publisher.publish(message())

    assert time.monotonic() - started < 1.5


def test_webhook_batch_stops_at_a_receiver_that_times_out(receiver: Receiver) -> None:
    receiver.delay = 2.0
    publisher = WebhookPublisher(url=receiver.url, secret=SECRET, timeout=(1.0, 0.3))

    started = time.monotonic()
    results = publisher.publish_many([message(n) for n in range(5)])

    assert time.monotonic() - started < 1.5  # one timeout, not five
    assert len(results) == 5
    assert all(isinstance(result, PublishError) and "timed out" in str(result) for result in results)
    assert len(receiver.requests) == 1


def test_webhook_batch_goes_on_after_an_error_status(receiver: Receiver) -> None:
    receiver.statuses = [500]

    results = WebhookPublisher(url=receiver.url, secret=SECRET).publish_many([message(1), message(2), message(3)])

    assert isinstance(results[0], PublishError)
    assert results[1:] == [None, None]


def test_webhook_unreachable_receiver_raises_without_leaking_the_url_token() -> None:
    with socket_without_listener() as port:
        publisher = WebhookPublisher(url=f"http://user:pw@127.0.0.1:{port}/hook?token=t0ps3cret", secret=SECRET)
        with pytest.raises(PublishError) as caught:
            publisher.publish(message())

    assert "t0ps3cret" not in str(caught.value)
    assert ":pw@" not in str(caught.value)
    assert f"127.0.0.1:{port}/hook" in str(caught.value)


def test_webhook_retry_keeps_the_message_id_and_signs_again(receiver: Receiver) -> None:
    receiver.statuses = [500]
    publisher = WebhookPublisher(url=receiver.url, secret=SECRET)
    first = message()
    retry = dataclasses.replace(first, attempt=2)

    with pytest.raises(PublishError):
        publisher.publish(first)
    publisher.publish(retry)

    ids = [headers["X-Message-ID"] for headers, _ in receiver.requests]
    assert ids == [first.message_id, first.message_id]
    assert all(verify_signature(body, headers["X-Signature"], SECRET) for headers, body in receiver.requests)


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://example.com/", "secret": SECRET},
        {"url": "not a url", "secret": SECRET},
        {"url": "http://127.0.0.1/", "secret": ""},
        {"url": "http://127.0.0.1/", "secret": SECRET, "timeout": 0},
        {"url": "http://127.0.0.1/", "secret": SECRET, "timeout": (1, -1)},
    ],
)
def test_webhook_refuses_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfigured, match="WebhookPublisher"):
        WebhookPublisher(**options)


def test_verify_signature_accepts_only_the_body_it_signs() -> None:
    body = b'{"message_id":"m-1","event":{}}'
    signature = sign(body, SECRET)
    bare = signature.removeprefix("sha256=")

    assert verify_signature(body, signature, SECRET)
    assert verify_signature(body, bare, SECRET)  # the prefix is optional
    assert verify_signature(body, "SHA256=" + bare.upper(), SECRET)
    assert not verify_signature(body + b" ", signature, SECRET)
    assert not verify_signature(body, signature, SECRET + "x")
    assert not verify_signature(body, "", SECRET)
    assert not verify_signature(body, None, SECRET)
    assert not verify_signature(body, signature, "")
    assert not verify_signature(body, "sha256=zz", SECRET)


class socket_without_listener:
    """A local port that nothing listens on (bound, never listening), for refused connections."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# ---------------------------------------------------------------- Redis Streams
@pytest.fixture
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")
    keys: list[str] = []
    client.new_key = lambda: keys.append(f"test-outbox-{uuid.uuid4().hex}") or keys[-1]  # type: ignore[attr-defined]
    yield client
    if keys:
        client.delete(*keys)
    client.close()


def test_redis_streams_xadd_fields(redis_client) -> None:
    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    stream = redis_client.new_key()
    publisher = RedisStreamsPublisher(url=REDIS_URL, stream=stream)
    sent = message(3)

    publisher.publish(sent)
    publisher.close()

    [(_, fields)] = redis_client.xrange(stream)
    assert fields == {
        b"message_id": sent.message_id.encode(),
        b"event_type": b"OrderConfirmed",
        b"body": sent.body_bytes(),
    }


def test_redis_streams_batch_is_one_pipeline_with_a_result_per_message(redis_client, monkeypatch) -> None:
    from redis.connection import Connection

    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    stream = redis_client.new_key()
    publisher = RedisStreamsPublisher(url=REDIS_URL, stream=stream)
    batch = [message(n) for n in range(50)]
    publisher.publish_many([message(99)])  # connect first: the handshake is not the batch's
    sends: list[int] = []
    send = Connection.send_packed_command

    def counted(self, command, check_health=True):
        sends.append(1)
        return send(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    results = publisher.publish_many(batch)
    monkeypatch.undo()

    assert results == [None] * 50
    assert len(sends) == 1  # the 50 XADDs went out in one write: one round trip
    entries = redis_client.xrange(stream)[1:]
    assert [fields[b"message_id"].decode() for _, fields in entries] == [m.message_id for m in batch]
    assert publisher.publish_many([]) == []


def test_redis_streams_maps_refused_commands_to_their_messages(redis_client) -> None:
    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    key = redis_client.new_key()
    redis_client.set(key, "not a stream")
    publisher = RedisStreamsPublisher(url=REDIS_URL, stream=key)

    results = publisher.publish_many([message(1), message(2)])

    assert len(results) == 2
    assert all(isinstance(r, PublishError) and "WRONGTYPE" in str(r) for r in results)
    with pytest.raises(PublishError, match="WRONGTYPE"):
        publisher.publish(message(3))


def test_redis_streams_maxlen_trims_the_stream(redis_client) -> None:
    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    stream = redis_client.new_key()
    publisher = RedisStreamsPublisher(url=REDIS_URL, stream=stream, maxlen=10)

    for _ in range(5):
        publisher.publish_many([message(n) for n in range(200)])

    assert redis_client.xlen(stream) < 1000  # approximate trimming: about maxlen, never all


def test_redis_streams_unreachable_server_fails_every_message() -> None:
    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    with socket_without_listener() as port:
        publisher = RedisStreamsPublisher(url=f"redis://:hunter2@127.0.0.1:{port}/0", stream="s", timeout=0.5)
        results = publisher.publish_many([message(1), message(2)])

    assert len(results) == 2
    assert all(isinstance(r, PublishError) for r in results)
    assert "hunter2" not in str(results[0])


@pytest.mark.parametrize(
    "options",
    [{"stream": ""}, {"stream": "s", "maxlen": 0}, {"stream": "s", "timeout": -1}, {"stream": "s", "url": "x"}],
)
def test_redis_streams_refuses_bad_options(options: dict[str, Any]) -> None:
    from eventsourcing_app.outbox.publishers.redis_streams import RedisStreamsPublisher

    with pytest.raises(ImproperlyConfigured, match="RedisStreamsPublisher"):
        RedisStreamsPublisher(**{"url": REDIS_URL, **options})


# ---------------------------------------------------------------- RabbitMQ
@pytest.fixture
def amqp():
    """`new_queue()` names (deleted afterwards) and `drain(queue)`, each on a connection of its own:
    a broker restart in the test must not break the fixture."""
    import pika
    import pika.exceptions

    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.skip(f"RabbitMQ unreachable at {AMQP_URL}: {exc!r}")
    queues: list[str] = []

    class Broker:
        @staticmethod
        def new_queue() -> str:
            queues.append(f"test-outbox-{uuid.uuid4().hex}")
            return queues[-1]

        @staticmethod
        def drain(queue: str) -> list[tuple[Any, Any, bytes]]:
            connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            channel, got = connection.channel(), []
            while (item := channel.basic_get(queue, auto_ack=True))[0] is not None:
                got.append(item)
            connection.close()
            return got

    yield Broker
    cleanup = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = cleanup.channel()
    for queue in queues:
        channel.queue_delete(queue)
    cleanup.close()


def _ensure_rabbitmq_running() -> None:
    """A test that restarts the broker must never leave it stopped."""
    if shutil.which("rabbitmqctl") is None:
        return
    status = subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "1"], capture_output=True, check=False)
    if status.returncode != 0:
        subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, check=False, timeout=120)
        subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "60"], capture_output=True, check=False)


def test_rabbitmq_publishes_persistent_messages_with_their_id(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    queue = amqp.new_queue()
    publisher = RabbitMQPublisher(url=AMQP_URL, declare_queue=queue)
    batch = [message(n) for n in range(3)]

    assert publisher.publish_many(batch) == [None] * 3
    publisher.close()

    got = amqp.drain(queue)
    assert [props.message_id for _, props, _ in got] == [m.message_id for m in batch]
    assert [body for _, _, body in got] == [m.body_bytes() for m in batch]
    assert {props.delivery_mode for _, props, _ in got} == {2}
    assert {props.content_type for _, props, _ in got} == {"application/json"}
    assert {props.type for _, props, _ in got} == {"OrderConfirmed"}


def test_rabbitmq_routes_by_event_type_on_a_named_exchange(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    queue = amqp.new_queue()
    publisher = RabbitMQPublisher(url=AMQP_URL, exchange="amq.topic", declare_queue=queue)

    publisher.publish(message(event_type="OrderCancelled"))
    publisher.close()

    [(method, _, _)] = amqp.drain(queue)
    assert method.routing_key == "OrderCancelled"


def test_rabbitmq_unroutable_message_is_not_delivered(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    publisher = RabbitMQPublisher(url=AMQP_URL, routing_key=f"no-such-queue-{uuid.uuid4().hex}")

    with pytest.raises(PublishError, match="no queue is bound"):
        publisher.publish(message())
    publisher.close()


def test_rabbitmq_unknown_exchange_is_an_error_not_a_hang(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    publisher = RabbitMQPublisher(url=AMQP_URL, exchange=f"no-such-exchange-{uuid.uuid4().hex}", routing_key="k")

    with pytest.raises(PublishError, match="NOT_FOUND"):
        publisher.publish(message())
    publisher.close()


def test_rabbitmq_unreachable_broker_raises_without_the_password() -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    with socket_without_listener() as port:
        publisher = RabbitMQPublisher(url=f"amqp://guest:hunter2@127.0.0.1:{port}/%2F", routing_key="q", timeout=1)
        with pytest.raises(PublishError) as caught:
            publisher.publish(message())

    assert "hunter2" not in str(caught.value)


def test_rabbitmq_batch_to_an_unreachable_broker_fails_at_once() -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    with socket_without_listener() as port:
        publisher = RabbitMQPublisher(url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", routing_key="q", timeout=1)
        results = publisher.publish_many([message(1), message(2), message(3)])

    assert len(results) == 3
    assert isinstance(results[0], PublishError)
    assert results[1] is results[0]
    assert results[2] is results[0]


def test_rabbitmq_unroutable_message_does_not_stop_the_batch(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    publisher = RabbitMQPublisher(url=AMQP_URL, exchange="amq.direct", routing_key=None)
    queue = amqp.new_queue()
    publisher_to_queue = RabbitMQPublisher(url=AMQP_URL, exchange="amq.direct", routing_key=queue, declare_queue=queue)
    publisher_to_queue.publish(message(0))  # declares and binds the queue to amq.direct under its own name
    publisher_to_queue.close()

    results = publisher.publish_many([message(1, event_type="NobodyListens"), message(2, event_type=queue)])
    publisher.close()

    assert isinstance(results[0], PublishError)
    assert "no queue is bound" in str(results[0])
    assert results[1] is None
    assert len(amqp.drain(queue)) == 2


def test_rabbitmq_needs_a_routing_key_on_the_default_exchange() -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    with pytest.raises(ImproperlyConfigured, match="routing_key or declare_queue"):
        RabbitMQPublisher(url=AMQP_URL)


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart the broker")
def test_rabbitmq_restarted_while_publishing_loses_nothing(amqp) -> None:
    """A publish loop retrying on error, as the processor does, while the broker restarts:
    every message it was told is delivered is in the queue afterwards, and publishing goes on."""
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    queue = amqp.new_queue()
    publisher = RabbitMQPublisher(url=AMQP_URL, declare_queue=queue, timeout=2)
    confirmed: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def publish_loop() -> None:
        while not stop.is_set():
            sent = message(len(confirmed))
            deadline = time.monotonic() + 60
            while True:  # the same message until it is confirmed, as the outbox retries it
                try:
                    publisher.publish(sent)
                except PublishError as exc:
                    errors.append(str(exc))
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.05)
                else:
                    confirmed.append(sent.message_id)
                    break

    loop = threading.Thread(target=publish_loop)
    loop.start()
    try:
        _wait_for(lambda: len(confirmed) >= 50, "50 confirmed publishes before the restart")
        for step in (["stop_app"], ["start_app"], ["await_startup", "--timeout", "60"]):
            subprocess.run(["rabbitmqctl", *step], check=True, capture_output=True, timeout=120)
        after_restart = len(confirmed)
        _wait_for(lambda: len(confirmed) >= after_restart + 50, "50 confirmed publishes after the restart")
    finally:
        stop.set()
        loop.join(timeout=90)
        _ensure_rabbitmq_running()
    publisher.close()

    assert errors, "the restart happened between two publishes: nothing was exercised"
    in_queue = {props.message_id for _, props, _ in amqp.drain(queue)}
    assert len(confirmed) >= 100
    assert set(confirmed) <= in_queue


@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl to restart the broker")
def test_rabbitmq_publish_after_a_broker_restart_reconnects_by_itself(amqp) -> None:
    from eventsourcing_app.outbox.publishers.rabbitmq import RabbitMQPublisher

    queue = amqp.new_queue()
    publisher = RabbitMQPublisher(url=AMQP_URL, declare_queue=queue)
    before, after = message(1), message(2)
    publisher.publish(before)
    try:
        for step in (["stop_app"], ["start_app"], ["await_startup", "--timeout", "60"]):
            subprocess.run(["rabbitmqctl", *step], check=True, capture_output=True, timeout=120)
    finally:
        _ensure_rabbitmq_running()

    publisher.publish(after)  # the old connection is dead: the publisher notices, reconnects, sends
    publisher.close()

    assert [props.message_id for _, props, _ in amqp.drain(queue)] == [before.message_id, after.message_id]


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# ---------------------------------------------------------------- NATS JetStream
@pytest.fixture
def jetstream():
    """A JetStream stream capturing a subject of its own (deleted afterwards), and a reader."""
    import nats
    import nats.errors

    name = f"TEST_OUTBOX_{uuid.uuid4().hex}"
    subject = f"test.outbox.{uuid.uuid4().hex}"

    async def run(work: Callable[[Any], Any]) -> Any:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()

    try:
        asyncio.run(run(lambda js: js.add_stream(name=name, subjects=[subject])))
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        pytest.skip(f"NATS JetStream unreachable at {NATS_URL}: {exc!r}")

    class Stream:
        stream = name

        def __init__(self) -> None:
            self.subject = subject

        def messages(self) -> list[Any]:
            async def read(js: Any) -> list[Any]:
                info = await js.stream_info(name)
                return [await js.get_msg(name, seq) for seq in range(1, info.state.last_seq + 1)]

            return asyncio.run(run(read))

    yield Stream()
    asyncio.run(run(lambda js: js.delete_stream(name)))


def test_nats_publishes_with_the_message_id_and_jetstream_drops_duplicates(jetstream) -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    publisher = NatsJetStreamPublisher(servers=NATS_URL, subject=jetstream.subject, stream=jetstream.stream)
    first, second = message(1), message(2)

    publisher.publish(first)
    assert publisher.publish_many([second, first, second]) == [None, None, None]  # redeliveries ack as duplicates
    publisher.close()

    stored = jetstream.messages()
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [first.message_id, second.message_id]
    assert [m.data for m in stored] == [first.body_bytes(), second.body_bytes()]
    assert stored[0].headers["Event-Type"] == "OrderConfirmed"


def test_nats_batch_acks_every_message(jetstream) -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    publisher = NatsJetStreamPublisher(servers=[NATS_URL], subject=jetstream.subject)
    batch = [message(n) for n in range(100)]

    assert publisher.publish_many(batch) == [None] * 100
    publisher.close()

    assert [m.headers["Nats-Msg-Id"] for m in jetstream.messages()] == [m.message_id for m in batch]


def test_nats_wrong_expected_stream_is_refused(jetstream) -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    publisher = NatsJetStreamPublisher(servers=NATS_URL, subject=jetstream.subject, stream="SOME_OTHER_STREAM")

    with pytest.raises(PublishError, match="failed"):
        publisher.publish(message())
    publisher.close()

    assert jetstream.messages() == []


def test_nats_subject_without_a_stream_is_not_delivered(jetstream) -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    publisher = NatsJetStreamPublisher(servers=NATS_URL, subject=f"test.nostream.{uuid.uuid4().hex}", timeout=1)

    with pytest.raises(PublishError, match="No JetStream stream captures"):
        publisher.publish(message())
    publisher.close()


def test_nats_unreachable_server_fails_in_bounded_time_and_close_stops_the_loop() -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    threads_before = threading.active_count()
    with socket_without_listener() as port:
        publisher = NatsJetStreamPublisher(servers=f"nats://127.0.0.1:{port}", subject="test.down", timeout=1)
        started = time.monotonic()
        results = publisher.publish_many([message(1), message(2)])
        elapsed = time.monotonic() - started
        publisher.close()

    assert all(isinstance(r, PublishError) and "Cannot connect" in str(r) for r in results)
    assert elapsed < 5
    assert threading.active_count() == threads_before
    with pytest.raises(PublishError, match="closed"):
        publisher.publish(message())


@pytest.mark.parametrize("options", [{"subject": "a.*"}, {"subject": ""}, {"servers": []}, {"timeout": 0}])
def test_nats_refuses_bad_options(options: dict[str, Any]) -> None:
    from eventsourcing_app.outbox.publishers.nats import NatsJetStreamPublisher

    with pytest.raises(ImproperlyConfigured, match="NatsJetStreamPublisher"):
        NatsJetStreamPublisher(**{"servers": NATS_URL, "subject": "a.b", **options})


# ---------------------------------------------------------------- Celery task
RECEIVED: list[tuple[str, dict[str, Any]]] = []


@shared_task(bind=True, name="tests.outbox_publishers.record_body")
def record_body(self: Any, body: dict[str, Any]) -> None:
    RECEIVED.append((self.request.id, body))


@shared_task(name="tests.outbox_publishers.refuse_body")
def refuse_body(body: dict[str, Any]) -> None:
    raise RuntimeError(f"refused {body['message_id']}")


def test_celery_eager_runs_the_task_with_the_body() -> None:
    RECEIVED.clear()
    sent = message(1, total=decimal.Decimal("9.90"))

    CeleryTaskPublisher(task="tests.outbox_publishers.record_body").publish(sent)

    assert RECEIVED == [(sent.message_id, json.loads(sent.body_bytes()))]
    assert RECEIVED[0][1]["event"]["data"]["total"] == "9.90"


def test_celery_eager_task_failure_means_not_delivered() -> None:
    with pytest.raises(RuntimeError, match="refused"):
        CeleryTaskPublisher(task="tests.outbox_publishers.refuse_body").publish(message())


def test_celery_eager_unknown_task_is_an_error() -> None:
    with pytest.raises(PublishError, match=r"No Celery task named 'tests\.nope'"):
        CeleryTaskPublisher(task="tests.nope").publish(message())


def test_celery_through_the_broker_sends_the_task_by_name() -> None:
    from project.celery import app

    queue = f"test-outbox-{uuid.uuid4().hex}"
    sent = message()
    app.conf.task_always_eager = False
    try:
        CeleryTaskPublisher(task="some.other.service.task", queue=queue).publish(sent)
    except PublishError as exc:
        pytest.skip(f"Celery broker unreachable: {exc}")
    finally:
        app.conf.task_always_eager = True
    with app.connection_for_write() as connection:
        simple = connection.SimpleQueue(queue)
        try:
            received = simple.get(timeout=5)
            received.ack()
        finally:
            simple.queue.delete()
            simple.close()

    assert received.headers["task"] == "some.other.service.task"
    assert received.headers["id"] == sent.message_id
    args, kwargs, _ = received.payload
    assert args == [json.loads(sent.body_bytes())]
    assert kwargs == {}


def test_celery_refuses_bad_options() -> None:
    with pytest.raises(ImproperlyConfigured, match="CeleryTaskPublisher"):
        CeleryTaskPublisher(task="")
    with pytest.raises(ImproperlyConfigured, match="CeleryTaskPublisher"):
        CeleryTaskPublisher(task="t", queue="")


# ---------------------------------------------------------------- log
def test_log_publisher_logs_one_line_per_message_without_the_payload(caplog: pytest.LogCaptureFixture) -> None:
    publisher = LogPublisher()
    batch = [message(1, email="alice@example.com"), message(2, email="bob@example.com")]

    with caplog.at_level(logging.INFO, logger="eventsourcing_app.outbox"):
        assert publisher.publish_many(batch) == [None, None]

    records = [r for r in caplog.records if r.name == "eventsourcing_app.outbox"]
    assert len(records) == 2
    for record, sent in zip(records, batch, strict=True):
        text = record.getMessage()
        assert record.levelno == logging.INFO
        assert sent.message_id in text
        assert sent.event_type in text
        assert sent.stream_id in text
        assert "example.com" not in text
        assert record.message_id == sent.message_id


def test_log_publisher_level_and_logger_are_options(caplog: pytest.LogCaptureFixture) -> None:
    publisher = LogPublisher(logger="shop.outbox", level="warning")

    with caplog.at_level(logging.WARNING, logger="shop.outbox"):
        publisher.publish(message())

    assert [(r.name, r.levelno) for r in caplog.records] == [("shop.outbox", logging.WARNING)]


def test_log_publisher_refuses_an_unknown_level() -> None:
    with pytest.raises(ImproperlyConfigured, match="unknown log level 'LOUD'"):
        LogPublisher(level="LOUD")


# ---------------------------------------------------------------- through the processor
@dataclass(frozen=True)
class Probed(DomainEvent, event_type="tests.outbox_publishers.Probed"):
    """The event routed to the webhook in the end-to-end tests."""

    n: int


@pytest.fixture
def webhook_destination(settings, receiver: Receiver) -> str:
    """A webhook destination to `receiver` for Probed events, with tiny retry delays and 4 attempts."""
    destination = f"hook-{uuid.uuid4().hex[:8]}"
    settings.EVENTSOURCING = {
        **(settings.EVENTSOURCING or {}),
        "OUTBOX_DESTINATIONS": {
            destination: {
                "PUBLISHER": "eventsourcing_app.outbox.publishers.webhook.WebhookPublisher",
                "OPTIONS": {"url": receiver.url, "secret": SECRET, "timeout": 2.0},
            }
        },
        "OUTBOX_ROUTES": [{"events": [Probed.event_type], "destination": destination}],
        "OUTBOX_RETRY_BASE_DELAY": 0.01,
        "OUTBOX_RETRY_MAX_DELAY": 0.02,
        "OUTBOX_MAX_ATTEMPTS": 4,
    }
    return destination


def process_until(destination: str, done: Callable[[OutboxMessage], bool]) -> OutboxMessage:
    """Run the processor (as `process_outbox` would, again and again) until the message is `done`."""
    deadline = time.monotonic() + 20
    with OutboxProcessor(destinations=[destination]) as processor:
        while True:
            processor.run()
            row = OutboxMessage.objects.get(destination=destination)
            if done(row):
                return row
            assert time.monotonic() < deadline, f"still {row.status} after {row.attempts} attempts: {row.last_error}"
            time.sleep(0.01)


def assert_same_signed_message(receiver: Receiver, row: OutboxMessage) -> None:
    for headers, body in receiver.requests:
        assert headers["X-Message-ID"] == str(row.message_id)
        assert json.loads(body)["message_id"] == str(row.message_id)
        assert verify_signature(body, headers["X-Signature"], SECRET)


@pytest.mark.django_db
def test_a_failing_receiver_gets_the_message_after_retries(
    webhook_destination: str, receiver: Receiver, event_store
) -> None:
    receiver.statuses = [500, 503, 502]  # fails three times, then answers 200
    event_store.append(f"Probe-{uuid.uuid4()}", [Probed(n=1)])

    row = process_until(webhook_destination, lambda row: row.status != OutboxStatus.PENDING)

    assert row.status == OutboxStatus.DELIVERED
    assert row.attempts == 4
    assert len(receiver.requests) == 4
    assert_same_signed_message(receiver, row)
    assert json.loads(receiver.requests[-1][1])["event"]["data"] == {"n": 1}


@pytest.mark.django_db
def test_a_receiver_down_past_max_attempts_dead_letters_then_a_requeue_delivers(
    webhook_destination: str, receiver: Receiver, event_store
) -> None:
    receiver.statuses = [503] * 4
    event_store.append(f"Probe-{uuid.uuid4()}", [Probed(n=2)])

    dead = process_until(webhook_destination, lambda row: row.status != OutboxStatus.PENDING)

    assert dead.status == OutboxStatus.DEAD
    assert dead.attempts == 4
    assert "503" in dead.last_error
    assert len(receiver.requests) == 4

    assert requeue_dead(OutboxMessage.objects.filter(pk=dead.pk)) == 1
    row = process_until(webhook_destination, lambda row: row.status != OutboxStatus.PENDING)

    assert row.status == OutboxStatus.DELIVERED
    assert len(receiver.requests) == 5
    assert_same_signed_message(receiver, row)
