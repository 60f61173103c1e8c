"""Where the shop's order outcomes go: the example project's outbox destinations and routes.

Confirmed and cancelled orders go to the `shop.order_notification` Celery task
(always) and, when `SHOP_WEBHOOK_URL` is set, to that URL as signed webhooks.
`project/settings.py` merges `outbox_settings(...)` into `EVENTSOURCING`; this
module imports no models, so settings can import it.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

NOTIFICATION_DESTINATION = "shop-notifications"
WEBHOOK_DESTINATION = "shop-webhook"
NOTIFICATION_TASK = "shop.order_notification"
ORDER_OUTCOMES = ["OrderConfirmed", "OrderCancelled"]


def outbox_settings(*, webhook_url: str = "", webhook_secret: str = "") -> dict[str, Any]:
    """`OUTBOX_DESTINATIONS` and `OUTBOX_ROUTES` for the shop.

    Raises:
        ImproperlyConfigured: a webhook URL without a secret to sign its bodies with (the
            receiver could not tell our messages from anyone else's).
    """
    destinations: dict[str, Any] = {
        NOTIFICATION_DESTINATION: {
            "PUBLISHER": "eventsourcing_app.outbox.publishers.celery.CeleryTaskPublisher",
            "OPTIONS": {"task": NOTIFICATION_TASK},
        }
    }
    routes = [{"events": ORDER_OUTCOMES, "destination": NOTIFICATION_DESTINATION}]
    if webhook_url:
        if not webhook_secret:
            raise ImproperlyConfigured("SHOP_WEBHOOK_URL is set: set SHOP_WEBHOOK_SECRET too, to sign the bodies.")
        destinations[WEBHOOK_DESTINATION] = {
            "PUBLISHER": "eventsourcing_app.outbox.publishers.webhook.WebhookPublisher",
            "OPTIONS": {"url": webhook_url, "secret": webhook_secret},
        }
        routes.append({"events": ORDER_OUTCOMES, "destination": WEBHOOK_DESTINATION})
    return {"OUTBOX_DESTINATIONS": destinations, "OUTBOX_ROUTES": routes}
