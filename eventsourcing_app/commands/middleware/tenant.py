"""Resolve the command's tenant from the user (TENANT_RESOLVER) or the request, optionally required."""

from __future__ import annotations

from ...conf import es_settings
from ...exceptions import CommandPermissionError, TenantRequiredError
from ..base import Command, CommandContext, CommandResult
from . import Middleware, Next


def tenant_of_user(user: object) -> str | None:
    """The tenant a user belongs to, from EVENTSOURCING["TENANT_RESOLVER"] (None: no tenant)."""
    resolver = es_settings.TENANT_RESOLVER
    if resolver is None or user is None or not getattr(user, "is_authenticated", False):
        return None
    tenant = resolver(user)
    return None if tenant in (None, "") else str(tenant)


class TenantMiddleware(Middleware):
    """A user bound to a tenant acts only for it; others may name one (X-Tenant-ID)."""

    def __call__(self, command: Command, context: CommandContext, next_: Next) -> CommandResult:
        users_tenant = tenant_of_user(context.user)
        if users_tenant is not None:
            if context.tenant_id not in (None, users_tenant):
                raise CommandPermissionError("You cannot act for another tenant.")
            context.tenant_id = users_tenant
        if context.tenant_id is None and es_settings.TENANT_REQUIRED:
            raise TenantRequiredError()
        return next_(command, context)
