"""App configuration."""

from django.apps import AppConfig

__all__ = ["EventsourcingConfig"]


class EventsourcingConfig(AppConfig):
    name = "eventsourcing_app"
    verbose_name = "Event sourcing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
