"""Stream, Event and Snapshot: the tables of the event store.

Rows of `Event` are written only by `EventStore.append()` (raw SQL on the hot
path) and never changed: the model and its queryset refuse every write, and on
PostgreSQL a trigger refuses UPDATE and DELETE as well.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models
from django.db.models.fields.json import KeyTransform
from django.utils.translation import gettext_lazy as _

from ..exceptions import ImmutableEventError
from .querysets import EventQuerySet, StreamQuerySet


class Stream(models.Model):
    """One aggregate's (or any other) ordered sequence of events."""

    stream_id = models.CharField(
        _("stream id"), max_length=255, primary_key=True, help_text=_('"Category-id", e.g. "Order-3f2a…".')
    )
    category = models.CharField(
        _("category"), max_length=100, db_index=True, help_text=_("The part of the stream id before the first dash.")
    )
    version = models.PositiveIntegerField(_("version"), help_text=_("Version of the stream's last event."))
    tenant_id = models.CharField(
        _("tenant id"),
        max_length=100,
        blank=True,
        default="",
        db_index=True,
        help_text=_("Tenant of the first append; tenants only see their own streams."),
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True, db_index=True)

    objects = StreamQuerySet.as_manager()

    class Meta:
        """Streams are listed most recently changed first."""

        db_table = "eventsourcing_stream"
        ordering = ["-updated_at"]
        verbose_name = _("stream")
        verbose_name_plural = _("streams")

    def __str__(self) -> str:
        return f"{self.stream_id} (v{self.version})"

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError("Streams are written by EventStore.append().")

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError("Streams hold immutable events and cannot be deleted.")


class Event(models.Model):
    """One immutable fact, at a `version` in its stream and a `position` in the global log."""

    position = models.BigAutoField(
        _("position"), primary_key=True, help_text=_("Place in the global log; increases in commit order.")
    )
    event_id = models.UUIDField(_("event id"), unique=True, help_text=_("Unique id; appending it again is a no-op."))
    stream = models.ForeignKey(
        Stream,
        verbose_name=_("stream"),
        on_delete=models.PROTECT,
        db_column="stream_id",
        related_name="events",
        # No database constraint or plain index: only the store writes events, with their stream
        # row in the same statement, and the unique (stream, version) index serves lookups. A
        # constraint's per-row check and a second index on random stream ids slowed appends by
        # about a fifth (docs/benchmarks.md).
        db_constraint=False,
        db_index=False,
    )
    category = models.CharField(_("category"), max_length=100, help_text=_("The stream's category, for filtering."))
    version = models.PositiveIntegerField(_("version"), help_text=_("1-based place in the stream."))
    event_type = models.CharField(_("event type"), max_length=200)
    schema_version = models.PositiveSmallIntegerField(_("schema version"), default=1)
    data = models.JSONField(_("data"))
    metadata = models.JSONField(
        _("metadata"), default=dict, help_text=_("correlation_id, causation_id, user_id, tenant_id, custom.")
    )
    tenant_id = models.CharField(
        _("tenant id"), max_length=100, blank=True, default="", help_text=_("metadata.tenant_id, for filtering.")
    )
    recorded_at = models.DateTimeField(_("recorded at"), db_index=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        """Events are read in log order; the indexes serve stream reads and filtered log reads."""

        db_table = "eventsourcing_event"
        ordering = ["position"]
        verbose_name = _("event")
        verbose_name_plural = _("events")
        constraints = [models.UniqueConstraint(fields=["stream", "version"], name="es_event_stream_version_uniq")]
        indexes = [
            models.Index(fields=["event_type", "position"], name="es_event_type_pos_idx"),
            models.Index(fields=["category", "position"], name="es_event_category_pos_idx"),
            models.Index(fields=["tenant_id", "position"], name="es_event_tenant_pos_idx"),
            models.Index(KeyTransform("correlation_id", "metadata"), name="es_event_correlation_idx"),
            # The admin's stream id search (startswith); the pattern operator class is PostgreSQL's
            # way to let LIKE 'prefix%' use an index under any collation (other databases ignore it).
            models.Index(fields=["stream"], opclasses=["varchar_pattern_ops"], name="es_event_stream_prefix_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.position} {self.event_type} ({self.stream_id} v{self.version})"

    def save(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableEventError()


class Snapshot(models.Model):
    """The latest saved state of one aggregate, so loading reads it and the events after it."""

    stream = models.OneToOneField(
        Stream, verbose_name=_("stream"), on_delete=models.PROTECT, primary_key=True, db_column="stream_id"
    )
    aggregate_type = models.CharField(_("aggregate type"), max_length=200)
    version = models.PositiveIntegerField(_("version"), help_text=_("Stream version the state was taken at."))
    state = models.JSONField(_("state"))
    created_at = models.DateTimeField(_("created at"), auto_now=True)

    class Meta:
        """One snapshot per stream, replaced as the aggregate grows."""

        db_table = "eventsourcing_snapshot"
        ordering = ["stream_id"]
        verbose_name = _("snapshot")
        verbose_name_plural = _("snapshots")

    def __str__(self) -> str:
        return f"{self.stream_id} @ v{self.version}"
