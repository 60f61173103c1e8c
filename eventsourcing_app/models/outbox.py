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
        """Indexes for claiming due messages, per-stream ordering and cleanup.

        The first two cover pending rows only: they stay small however many delivered
        rows wait for cleanup, and the claim scans pending rows in id order and checks
        each one's stream for earlier pending messages with one lookup.
        """

        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=("event_id", "destination"), name="eventsourcing_outbox_event_dest"),
        ]
        indexes = [
            models.Index(fields=("id",), condition=models.Q(status="pending"), name="eventsourcing_outbox_due"),
            models.Index(
                fields=("stream_id", "destination", "id"),
                condition=models.Q(status="pending"),
                name="eventsourcing_outbox_stream",
            ),
            models.Index(fields=("status", "delivered_at"), name="eventsourcing_outbox_delivered"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.destination} ({self.status})"


class ProcessedMessage(models.Model):
    """A message id a consumer has handled, recorded in the transaction of the handling.

    Delivery is at least once, so a consumer sees some messages twice; the row makes the second
    delivery a no-op (see `eventsourcing_app.outbox.consumer.handle_once`). Rows are kept as long
    as a redelivery can arrive, then removed by `cleanup_processed_messages`.
    """

    consumer = models.CharField(_("consumer"), max_length=100, help_text=_("Who handled it (one name per handler)."))
    message_id = models.CharField(_("message id"), max_length=200)
    processed_at = models.DateTimeField(_("processed at"), default=timezone.now)

    class Meta:
        """One row per (consumer, message id); processed_at is indexed for cleanup."""

        verbose_name = _("processed message")
        verbose_name_plural = _("processed messages")
        ordering = ("id",)
        constraints = [
            models.UniqueConstraint(fields=("consumer", "message_id"), name="eventsourcing_processed_once"),
        ]
        indexes = [models.Index(fields=("processed_at",), name="eventsourcing_processed_at")]

    def __str__(self) -> str:
        return f"{self.consumer}: {self.message_id}"
