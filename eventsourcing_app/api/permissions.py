"""Who may dispatch which command, and who may read the event store."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission

from ..commands.registry import permission_codename


class CanDispatchCommand(BasePermission):
    """The user holds `eventsourcing_app.dispatch_<command type>` (superusers hold every permission)."""

    message = "You do not have permission to dispatch this command."

    def has_permission(self, request: Any, view: Any) -> bool:
        command_type = view.kwargs.get("command_type") or getattr(view, "command_type", None)
        return bool(
            request.user
            and request.user.is_authenticated
            and request.user.has_perm(f"eventsourcing_app.{permission_codename(command_type)}")
        )


class IsStaff(BasePermission):
    """Operator endpoints: staff users only."""

    message = "Only staff users may read the event store."

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)
