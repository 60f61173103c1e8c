"""The shop's admin: suppliers are edited here (and captured as events); notifications are shown."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from .models import OrderNotification, Supplier


@admin.register(Supplier)
class SupplierAdmin(admin.ModelAdmin):
    """An ordinary model: every save or delete here appends a `shop.Supplier.*` event in the same transaction."""

    list_display = ["name", "email", "active"]
    list_filter = ["active"]
    search_fields = ["name", "email"]


@admin.register(OrderNotification)
class OrderNotificationAdmin(admin.ModelAdmin):
    """What the notification task received: written by the task only, so read-only here."""

    list_display = ["received_at", "event_type", "order_id", "reason", "message_id"]
    list_filter = ["event_type"]
    search_fields = ["=order_id", "=message_id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
