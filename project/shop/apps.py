"""App configuration of the example shop."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "project.shop"
    label = "shop"
    verbose_name = "Shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers shop.order_notification in every process, not only in Celery workers (which
        # autodiscover it): with no broker, the outbox runs the task here, by name.
        from . import tasks  # noqa: F401
