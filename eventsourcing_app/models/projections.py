"""Checkpoint: where an async projection is in the global log, its state and its lease."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class CheckpointStatus(models.TextChoices):
    RUNNING = "running", _("running")
    PAUSED = "paused", _("paused")
    FAILED = "failed", _("failed")
    REBUILDING = "rebuilding", _("rebuilding")


class Checkpoint(models.Model):
    """One async projection's (or saga manager's) position in the log.

    The runner advances `position` in the same transaction as the read-model
    writes, guarded by its lease, so each event's effect is applied exactly once.
    """

    name = models.CharField(_("name"), max_length=200, primary_key=True)
    position = models.BigIntegerField(_("position"), default=0, help_text=_("Last global position applied."))
    status = models.CharField(
        _("status"), max_length=20, choices=CheckpointStatus.choices, default=CheckpointStatus.RUNNING
    )
    last_error = models.TextField(_("last error"), blank=True, default="")
    failed_position = models.BigIntegerField(
        _("failed position"), null=True, blank=True, help_text=_("Position of the event that failed.")
    )
    lease_owner = models.CharField(
        _("lease owner"), max_length=200, blank=True, default="", help_text=_("Worker processing it now.")
    )
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        """Checkpoints by name."""

        db_table = "eventsourcing_checkpoint"
        ordering = ["name"]
        verbose_name = _("checkpoint")
        verbose_name_plural = _("checkpoints")

    def __str__(self) -> str:
        return f"{self.name} @ {self.position} ({self.status})"


class ProjectionDeadLetter(models.Model):
    """An event a projection with the "skip" policy could not apply; retried by an operator."""

    projection = models.CharField(_("projection"), max_length=200, db_index=True)
    position = models.BigIntegerField(_("position"))
    event_id = models.UUIDField(_("event id"))
    event_type = models.CharField(_("event type"), max_length=200)
    error = models.TextField(_("error"))
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    retried_at = models.DateTimeField(_("retried at"), null=True, blank=True)

    class Meta:
        """Dead letters in log order per projection."""

        db_table = "eventsourcing_projection_dead_letter"
        ordering = ["projection", "position"]
        verbose_name = _("projection dead letter")
        verbose_name_plural = _("projection dead letters")
        constraints = [
            models.UniqueConstraint(fields=["projection", "position"], name="es_projection_dead_letter_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.projection}: {self.event_type} @ {self.position}"
