"""The shop's models: read models kept by its projections, and two ordinary models.

`Supplier` is a plain Django model edited in the admin; its changes are
recorded as events by capture from ordinary models (OUTBOX_CAPTURE_MODELS).
`OrderNotification` is written by the `shop.order_notification` Celery task,
the consumer end of the outbox.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils.translation import gettext_lazy as _


class OrderSummary(models.Model):
    """One order as clients see it: kept by the `order_summary` projection."""

    order_id = models.UUIDField(_("order id"), primary_key=True)
    customer_id = models.CharField(_("customer id"), max_length=100, db_index=True)
    status = models.CharField(_("status"), max_length=20, db_index=True)
    total = models.DecimalField(_("total"), max_digits=14, decimal_places=2, default=Decimal("0"))
    items = models.JSONField(_("items"), default=list)
    placed_at = models.DateTimeField(_("placed at"))
    updated_at = models.DateTimeField(_("updated at"))

    class Meta:
        """Newest orders first."""

        ordering = ["-placed_at"]
        verbose_name = _("order summary")
        verbose_name_plural = _("order summaries")

    def __str__(self) -> str:
        return f"{self.order_id} ({self.status})"


class InventoryLevel(models.Model):
    """Stock of one SKU: kept by the `inventory_levels` projection."""

    sku = models.CharField(_("SKU"), max_length=64, primary_key=True)
    available = models.IntegerField(_("available"), default=0, help_text=_("In stock and not reserved."))
    reserved = models.IntegerField(_("reserved"), default=0, help_text=_("Held for orders."))

    class Meta:
        """By SKU."""

        ordering = ["sku"]
        verbose_name = _("inventory level")
        verbose_name_plural = _("inventory levels")

    def __str__(self) -> str:
        return f"{self.sku}: {self.available} available, {self.reserved} reserved"


class Supplier(models.Model):
    """A supplier: an ordinary model (not event-sourced) whose changes are captured as events."""

    name = models.CharField(_("name"), max_length=200)
    email = models.EmailField(_("email"), blank=True)
    active = models.BooleanField(_("active"), default=True)

    class Meta:
        """By name."""

        ordering = ["name"]
        verbose_name = _("supplier")
        verbose_name_plural = _("suppliers")

    def __str__(self) -> str:
        return self.name


class OrderNotification(models.Model):
    """One confirmed or cancelled order as the shop's notification task received it from the outbox.

    `message_id` is the outbox message's stable id: the task records each
    message once however often it is delivered.
    """

    message_id = models.UUIDField(_("message id"), unique=True)
    order_id = models.UUIDField(_("order id"), db_index=True)
    event_type = models.CharField(_("event type"), max_length=100)
    reason = models.CharField(_("reason"), max_length=500, blank=True, help_text=_("Why it was cancelled."))
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)

    class Meta:
        """Newest first."""

        ordering = ["-received_at"]
        verbose_name = _("order notification")
        verbose_name_plural = _("order notifications")

    def __str__(self) -> str:
        return f"{self.event_type} {self.order_id}"
