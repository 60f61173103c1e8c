"""RabbitMQPublisher: persistent messages with publisher confirms, through pika.

A message counts as delivered only when the broker has confirmed it (for a durable queue:
written to disk) and it was routed to at least one queue (`mandatory`): a message published
to an exchange with no matching queue would otherwise vanish yet look delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pika
from django.core.exceptions import ImproperlyConfigured
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError, NackError, UnroutableError

from ...exceptions import PublishError
from ._batch import publish_each
from ._urls import redact
from .base import OutgoingMessage, Publisher

logger = logging.getLogger(__name__)


class RabbitMQPublisher(Publisher):
    """Publishes to `exchange` with `routing_key`; reconnects by itself after the broker went away.

    The connection opens on the first publish. When it has been lost since (broker restart,
    idle connection closed after missed heartbeats), the publish reconnects and tries once
    more; if that fails too the message is reported undelivered and the outbox retries it
    later, on a new connection.

    Args:
        url: an amqp(s):// URL (pika's URL parameters apply, e.g. `?heartbeat=30`).
        exchange: the exchange ("" is the default exchange, where the routing key names a queue).
        routing_key: the routing key; None uses the message's event type (for direct and topic
            exchanges), or `declare_queue` on the default exchange.
        declare_queue: a durable queue to declare on connect (idempotent) and, with a named
            exchange, to bind to it with the routing key ("#" when that is the event type).
        timeout: seconds to connect, and how long the broker may block publishing (memory or
            disk alarm) before the connection is given up.
    """

    def __init__(
        self,
        *,
        url: str,
        exchange: str = "",
        routing_key: str | None = None,
        declare_queue: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        if exchange == "" and not (routing_key or declare_queue):
            raise ImproperlyConfigured(
                "RabbitMQPublisher: on the default exchange the routing key is the queue's name; "
                "set routing_key or declare_queue."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ImproperlyConfigured(f"RabbitMQPublisher: timeout must be a positive number, not {timeout!r}.")
        try:
            self.parameters = pika.URLParameters(url)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"RabbitMQPublisher: bad url {redact(url)!r}: {exc}") from None
        self.parameters.socket_timeout = timeout
        self.parameters.stack_timeout = timeout
        self.parameters.blocked_connection_timeout = timeout
        self.exchange = exchange
        self.routing_key = routing_key if routing_key is not None or exchange else declare_queue
        self.declare_queue = declare_queue
        self.shown = f"{redact(url)} exchange {exchange!r}"
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def publish(self, message: OutgoingMessage) -> None:
        # A connection kept since the last publish may have died meanwhile (broker restart, missed
        # heartbeats while idle): failing on it earns one more try, on a new connection.
        retry = self._channel is not None
        while True:
            try:
                self._send(message)
                return
            except (UnroutableError, NackError) as exc:
                raise self._refused(message, exc) from exc
            except (AMQPError, OSError) as exc:
                self._disconnect()
                if not retry:
                    raise PublishError(f"Publishing to {self.shown} failed: {_describe(exc)}") from exc
                logger.info("RabbitMQ connection to %s lost (%s); reconnecting", self.shown, _describe(exc))
                retry = False

    def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """One confirmed publish at a time; once the broker is unreachable the rest fail untried."""
        return publish_each(self.publish, messages, unreachable=_broker_failure)

    def close(self) -> None:
        self._disconnect()

    def _send(self, message: OutgoingMessage) -> None:
        routing_key = self.routing_key if self.routing_key is not None else message.event_type
        properties = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message.message_id,
            type=message.event_type,
            headers={"destination": message.destination, "stream_id": message.stream_id},
        )
        # With confirms on, this returns once the broker has acked (raises on nack or return).
        self._open_channel().basic_publish(
            self.exchange, routing_key, message.body_bytes(), properties=properties, mandatory=True
        )

    def _open_channel(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open and self._connection and self._connection.is_open:
            return self._channel
        self._disconnect()
        self._connection = pika.BlockingConnection(self.parameters)
        channel = self._connection.channel()
        channel.confirm_delivery()
        if self.declare_queue:
            channel.queue_declare(self.declare_queue, durable=True)
            if self.exchange:
                channel.queue_bind(self.declare_queue, self.exchange, routing_key=self.routing_key or "#")
        self._channel = channel
        return channel

    def _disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except (AMQPError, OSError) as exc:  # already half gone: nothing left to release
                logger.debug("Closing the RabbitMQ connection to %s: %s", self.shown, _describe(exc))

    def _refused(self, message: OutgoingMessage, exc: AMQPError) -> PublishError:
        key = self.routing_key if self.routing_key is not None else message.event_type
        if isinstance(exc, UnroutableError):
            return PublishError(f"{self.shown} routed nothing for routing key {key!r}: no queue is bound to it.")
        return PublishError(f"{self.shown} refused the message (nack) for routing key {key!r}.")


def _broker_failure(exc: BaseException) -> bool:
    """Anything but a refusal of this one message (unroutable, nack): connection or channel gone."""
    cause = exc.__cause__
    return isinstance(cause, AMQPError | OSError) and not isinstance(cause, UnroutableError | NackError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
