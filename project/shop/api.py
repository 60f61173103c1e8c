"""The shop's read endpoints: order summaries and inventory levels (any authenticated user)."""

from __future__ import annotations

from typing import Any

from rest_framework import generics, serializers
from rest_framework.pagination import CursorPagination

from eventsourcing_app.api.views import ProblemDetailsMixin

from .models import InventoryLevel, OrderSummary


class OrderSummarySerializer(serializers.ModelSerializer):
    total = serializers.DecimalField(max_digits=14, decimal_places=2, coerce_to_string=True)

    class Meta:
        model = OrderSummary
        fields = ["order_id", "customer_id", "status", "total", "items", "placed_at", "updated_at"]


class InventoryLevelSerializer(serializers.ModelSerializer):
    class Meta:
        model = InventoryLevel
        fields = ["sku", "available", "reserved"]


class OrderPagination(CursorPagination):
    ordering = "-placed_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class OrderListView(ProblemDetailsMixin, generics.ListAPIView):
    """`GET /api/orders/`: newest first; `?customer_id=` and `?status=` narrow it down."""

    serializer_class = OrderSummarySerializer
    pagination_class = OrderPagination

    def get_queryset(self) -> Any:
        queryset = OrderSummary.objects.all()
        for field in ("customer_id", "status"):
            if value := self.request.query_params.get(field):
                queryset = queryset.filter(**{field: value})
        return queryset


class OrderDetailView(ProblemDetailsMixin, generics.RetrieveAPIView):
    """`GET /api/orders/<order_id>/`: 404 until the order is projected."""

    serializer_class = OrderSummarySerializer
    queryset = OrderSummary.objects.all()
    lookup_field = "order_id"


class InventoryLevelView(ProblemDetailsMixin, generics.RetrieveAPIView):
    """`GET /api/inventory/<sku>/`: 404 before the SKU's first AddStock is projected."""

    serializer_class = InventoryLevelSerializer
    queryset = InventoryLevel.objects.all()
    lookup_field = "sku"
