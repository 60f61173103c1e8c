"""IdempotencyRecord: the stored result of a command sent with an Idempotency-Key."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class IdempotencyRecordQuerySet(models.QuerySet):
    def expired(self) -> IdempotencyRecordQuerySet:
        return self.filter(expires_at__lte=timezone.now())

    def live(self) -> IdempotencyRecordQuerySet:
        return self.filter(expires_at__gt=timezone.now())


class IdempotencyRecord(models.Model):
    """One Idempotency-Key's request fingerprint and the response it got, until it expires."""

    scope = models.CharField(
        _("scope"), max_length=200, help_text=_("Tenant and user the key belongs to: keys never leak across users.")
    )
    key = models.CharField(_("key"), max_length=255, help_text=_("The client's Idempotency-Key."))
    command_type = models.CharField(_("command type"), max_length=200)
    request_hash = models.CharField(_("request hash"), max_length=64, help_text=_("SHA-256 of the canonical body."))
    response = models.JSONField(_("response"), null=True, blank=True, help_text=_("The first response's body."))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    objects = IdempotencyRecordQuerySet.as_manager()

    class Meta:
        """One record per key and scope; expired ones are cleaned up by a periodic task."""

        db_table = "eventsourcing_idempotency_record"
        ordering = ["-created_at"]
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="es_idempotency_scope_key_uniq")]

    def __str__(self) -> str:
        return f"{self.command_type} {self.key}"


class CommandPermission(models.Model):
    """Holds the `dispatch_<command>` permissions; it has no table.

    Each registered command type gets a permission `eventsourcing_app.dispatch_<type>`
    (created after migrate), granted to users and groups like any Django permission.
    """

    class Meta:
        """No table, no default add/change/delete/view permissions."""

        managed = False
        default_permissions = ()
        verbose_name = _("command permission")
        verbose_name_plural = _("command permissions")

    def __str__(self) -> str:
        return str(self._meta.verbose_name)
