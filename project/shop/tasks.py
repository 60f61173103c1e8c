"""The shop's Celery tasks: the consumer end of the outbox's Celery destination.

`shop.order_notification` receives each confirmed or cancelled order as an
outbox message body (`{"message_id", "destination", "event"}`, sent by
`CeleryTaskPublisher`). Delivery is at least once, so it records each message
id with its effect (`consume_once`): a redelivered message changes nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from eventsourcing_app.outbox.consumer import consume_once

from .models import OrderNotification

logger = logging.getLogger(__name__)

CONSUMER = "shop.order_notification"


@shared_task(name="shop.order_notification", ignore_result=True)
@consume_once(consumer=CONSUMER)
def order_notification(body: dict[str, Any]) -> None:
    """Record a confirmed or cancelled order as an `OrderNotification` (once per message id)."""
    event = body["event"]
    data = event["data"]
    OrderNotification.objects.create(
        message_id=body["message_id"],
        order_id=data["order_id"],
        event_type=event["event_type"],
        reason=data.get("reason") or "",
    )
    logger.info("order %s: %s (message %s)", data["order_id"], event["event_type"], body["message_id"])
