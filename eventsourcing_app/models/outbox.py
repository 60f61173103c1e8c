"""OutboxMessage: a message to the outside world, written in the same transaction as its event."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class OutboxStatus(models.TextChoices):
    PENDING = "pending", _("pending")
    DELIVERED = "delivered", _("delivered")
    DEAD = "dead", _("dead letter")
    DISCARDED = "discarded", _("discarded")


class OutboxMessage(models.Model):
    """One event bound for one destination.

    `message_id` is derived from the event id and the destination, so it is
    stable across retries, processors and replays: receivers de-duplicate by it.
    """

    message_id = models.UUIDField(_("message id"), unique=True, default=uuid.uuid4, editable=False)
    destination = models.CharField(_("destination"), max_length=100)
    event_id = models.UUIDField(_("event id"))
    position = models.BigIntegerField(_("position"), help_text=_("The event's global position."))
    stream_id = models.CharField(_("stream id"), max_length=255)
    event_type = models.CharField(_("event type"), max_length=255)
    tenant_id = models.CharField(_("tenant id"), max_length=100, blank=True, default="")
    payload = models.JSONField(_("payload"), help_text=_("The event as sent (after the route's transform)."))
    status = models.CharField(_("status"), max_length=20, choices=OutboxStatus.choices, default=OutboxStatus.PENDING)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    available_at = models.DateTimeField(_("next attempt at"), default=timezone.now)
    lease_owner = models.CharField(_("lease owner"), max_length=200, blank=True, default="")
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    last_error = models.TextField(_("last error"), blank=True, default="")
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)

    class Meta:
        """Indexes for claiming due messages, per-stream ordering and cleanup."""

        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=("event_id", "destination"), name="eventsourcing_outbox_event_dest"),
        ]
        indexes = [
            models.Index(fields=("status", "available_at"), name="eventsourcing_outbox_due"),
            models.Index(fields=("stream_id", "destination", "id"), name="eventsourcing_outbox_stream"),
            models.Index(fields=("status", "delivered_at"), name="eventsourcing_outbox_delivered"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.destination} ({self.status})"
