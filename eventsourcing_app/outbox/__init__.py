"""The transactional outbox: events routed to destinations, written with their events, published at least once.

Routes (settings or `register_route`) turn events into `OutboxMessage` rows in
the append's own transaction; `OutboxProcessor` (the `process_outbox` Celery
task and management command) publishes them through the destinations'
publishers, in order per stream and destination, with retries and dead letters.
"""

from .operations import DestinationStats, OutboxStats, cleanup_delivered, discard, outbox_stats, requeue_dead, retry_now
from .processor import BatchResult, OutboxProcessor, backoff_delay
from .publishers import OutgoingMessage, Publisher
from .routes import Route, default_payload, message_id_for, register_route, routes, unregister_route

__all__ = [
    "BatchResult",
    "DestinationStats",
    "OutboxProcessor",
    "OutboxStats",
    "OutgoingMessage",
    "Publisher",
    "Route",
    "backoff_delay",
    "cleanup_delivered",
    "default_payload",
    "discard",
    "message_id_for",
    "outbox_stats",
    "register_route",
    "requeue_dead",
    "retry_now",
    "routes",
    "unregister_route",
]
