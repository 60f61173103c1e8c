"""URLconf of the live webhook receiver in tests/test_outbox_consumer.py."""

from django.urls import path

from tests.test_outbox_consumer import OrderWebhook

urlpatterns = [path("hooks/orders/", OrderWebhook.as_view())]
