"""App configuration: system checks, discovery of commands, permissions per command type."""

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

__all__ = ["EventsourcingConfig", "EventsourcingSimpleConfig"]


class EventsourcingSimpleConfig(AppConfig):
    """AppConfig which does not discover `commands.py` modules (for tests that register by hand)."""

    name = "eventsourcing_app"
    verbose_name = "Event sourcing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .outbox.capture import connect_capture

        post_migrate.connect(create_command_permissions, sender=self)
        # Settings-driven, not discovery: both configs capture the models OUTBOX_CAPTURE_MODELS lists.
        connect_capture()


class EventsourcingConfig(EventsourcingSimpleConfig):
    """The default: also imports each installed app's `commands.py`, like the admin's autodiscover."""

    default = True

    def ready(self) -> None:
        super().ready()
        from django.utils.module_loading import autodiscover_modules

        from .commands import command_registry
        from .projections import projection_registry
        from .sagas import saga_registry

        autodiscover_modules("commands", register_to=command_registry)
        autodiscover_modules("projections", register_to=projection_registry)
        autodiscover_modules("sagas", register_to=saga_registry)


def create_command_permissions(using: str = "default", **kwargs: Any) -> None:
    """Create `eventsourcing_app.dispatch_<type>` for every registered command type (after migrate)."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    from .commands import command_registry
    from .models import CommandPermission

    content_type = ContentType.objects.db_manager(using).get_for_model(CommandPermission, for_concrete_model=False)
    existing = set(Permission.objects.using(using).filter(content_type=content_type).values_list("codename", flat=True))
    Permission.objects.using(using).bulk_create(
        [
            Permission(
                codename=registration.permission_codename,
                name=f"Can dispatch {registration.command_class.command_type}",
                content_type=content_type,
            )
            for registration in command_registry.registrations()
            if registration.permission_codename not in existing
        ]
    )
