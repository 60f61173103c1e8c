"""SagaState: one running instance of a saga, its step, data and what it has already handled."""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class SagaStatus(models.TextChoices):
    STARTED = "started", _("started")
    RUNNING = "running", _("running")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    COMPENSATING = "compensating", _("compensating")
    COMPENSATED = "compensated", _("compensated")
    COMPENSATION_FAILED = "compensation_failed", _("compensation failed")


FINAL_SAGA_STATUSES = (
    SagaStatus.COMPLETED,
    SagaStatus.FAILED,
    SagaStatus.COMPENSATED,
    SagaStatus.COMPENSATION_FAILED,
)


class SagaState(models.Model):
    """The state of one saga instance: a saga type and a correlation id name it.

    `version` grows with every change; a change is written only over the version
    it was read at, so two workers can never both move one saga on.
    """

    saga_type = models.CharField(_("saga type"), max_length=100)
    correlation_id = models.CharField(_("correlation id"), max_length=255)
    trace_id = models.CharField(
        _("trace id"),
        max_length=255,
        blank=True,
        default="",
        help_text=_("Correlation id of the event that started the saga: every command it issues carries it."),
    )
    status = models.CharField(_("status"), max_length=30, choices=SagaStatus.choices, default=SagaStatus.STARTED)
    current_step = models.CharField(_("current step"), max_length=100, blank=True, default="")
    data = models.JSONField(_("data"), default=dict, blank=True)
    processed_event_ids = models.JSONField(_("processed event ids"), default=list, blank=True)
    compensations = models.JSONField(
        _("compensations"), default=list, blank=True, help_text=_("Compensating commands of the completed steps.")
    )
    history = models.JSONField(_("history"), default=list, blank=True, help_text=_("Events handled, commands issued."))
    last_error = models.TextField(_("last error"), blank=True, default="")
    version = models.PositiveIntegerField(_("version"), default=0)
    tenant_id = models.CharField(_("tenant id"), max_length=100, blank=True, default="")
    started_at = models.DateTimeField(_("started at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    deadline = models.DateTimeField(_("deadline"), null=True, blank=True)

    class Meta:
        """One state per saga type and correlation id."""

        verbose_name = _("saga")
        verbose_name_plural = _("sagas")
        ordering = ("-started_at",)
        constraints = [
            models.UniqueConstraint(fields=("saga_type", "correlation_id"), name="eventsourcing_saga_correlation"),
        ]
        indexes = [
            models.Index(fields=("status", "deadline"), name="eventsourcing_saga_deadline"),
            models.Index(fields=("saga_type", "status"), name="eventsourcing_saga_status"),
        ]

    def __str__(self) -> str:
        return f"{self.saga_type} {self.correlation_id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_SAGA_STATUSES
