"""The shop's read models, kept by its projections (never written by anything else)."""

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
