"""URLs of the shop's read endpoints, under /api/."""

from django.urls import path

from .api import InventoryLevelView, OrderDetailView, OrderListView

urlpatterns = [
    path("orders/", OrderListView.as_view(), name="order-list"),
    path("orders/<uuid:order_id>/", OrderDetailView.as_view(), name="order-detail"),
    path("inventory/<str:sku>/", InventoryLevelView.as_view(), name="inventory-level"),
]
