"""Read-only admin for the event store: browse streams, events and snapshots, never change them.

Events are immutable (DESIGN §2): the models refuse every write, so the admin
never offers one. There is no add, change or delete permission and no
actions; staff with the view permission (superusers have it) get read-only
list and detail pages.

The event table is the largest table in the database and grows forever, so the
changelist is shaped for it. Every column it shows comes from the event row
itself (no join, no query per row). Search is by stream-id prefix or exact
event id, both on an index, never `icontains`. The filter choices come from
an index walk rather than a scan. Sorting is allowed only on indexed columns.
On PostgreSQL the unfiltered list counts its rows from the planner's estimate,
not with `COUNT(*)`.
"""

from __future__ import annotations

import json
import uuid
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import connections, models, router
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import Event, Snapshot, Stream

# The changelist link from a stream to its events; `lookup_allowed` accepts it because
# `stream_id` is the foreign key's own target, so the filter needs no join.
STREAM_EVENTS_LOOKUP = "stream__stream_id__exact"


def _distinct_values(model: type[models.Model], field_name: str) -> list[str]:
    """The distinct non-null values of an indexed column, in order, one index probe per value.

    `SELECT DISTINCT` reads every row (or index entry) of the table. This "loose
    index scan" jumps from one value to the next with `MIN(col) WHERE col > previous`,
    so it costs the number of distinct values, not the number of events. It works
    on PostgreSQL and SQLite, which both answer a correlated `MIN` from the index.
    """
    connection = connections[router.db_for_read(model)]
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(model._meta.get_field(field_name).column)
    sql = (
        f"WITH RECURSIVE walk(value) AS ("
        f"SELECT MIN({column}) FROM {table} "
        f"UNION ALL "
        f"SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > walk.value) FROM walk "
        f"WHERE walk.value IS NOT NULL"
        f") SELECT value FROM walk WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def _pretty_json(value: Any) -> SafeString:
    """Indented JSON in a <pre>; `format_html` escapes it, so stored data cannot inject markup.

    Keys are sorted because PostgreSQL's jsonb does not keep their written order:
    the same event then reads the same on every database.
    """
    text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return format_html('<pre class="eventsourcing-json">{}</pre>', text)


def _stream_events_url(stream_id: str) -> str:
    return f"{reverse('admin:eventsourcing_app_event_changelist')}?{urlencode({STREAM_EVENTS_LOOKUP: stream_id})}"


def _stream_link(stream_id: str) -> SafeString:
    """A link to the stream's detail page, built from the id alone so that no Stream row is loaded."""
    # `quote` is the admin's own escaping of primary keys in URLs ("_" and "/" in an id would break otherwise).
    url = reverse("admin:eventsourcing_app_stream_change", args=[quote(stream_id)])
    return format_html('<a href="{}">{}</a>', url, stream_id)


class _DistinctValueFilter(admin.SimpleListFilter):
    """Choices are the column's distinct values found by an index walk; selecting one filters exactly."""

    field_name: str

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, value) for value in _distinct_values(model_admin.model, self.field_name)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.field_name: value})


class EventTypeFilter(_DistinctValueFilter):
    """By event type, with the types actually present in the log (not only the registered classes)."""

    title = _("event type")
    parameter_name = field_name = "event_type"


class CategoryFilter(_DistinctValueFilter):
    """By stream category, the part of the stream id before the first dash."""

    title = _("category")
    parameter_name = field_name = "category"


class EstimatedCountPaginator(Paginator):
    """Counts an unfiltered PostgreSQL table from `pg_class.reltuples` once it is large.

    `COUNT(*)` on PostgreSQL reads the whole table, which on a log of millions of
    events takes seconds on every page view. The planner's estimate is kept
    current by autovacuum and is free to read. Below `estimate_above` rows, or
    when filtered, or on other databases, the count is exact. An estimate can
    be off by a few percent, so the oldest page or two may not be linked;
    filtering by recorded date reaches them.
    """

    estimate_above = 100_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            estimate = self._estimated_rows(queryset)
            if estimate > self.estimate_above:
                return estimate
        return super().count

    @staticmethod
    def _estimated_rows(queryset: QuerySet) -> int:
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return -1
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                [connection.ops.quote_name(queryset.model._meta.db_table)],
            )
            row = cursor.fetchone()
        return -1 if row is None else int(row[0])


class _EventChangeList(ChangeList):
    """Leaves `data` and `metadata` out of the list query: the list does not show them and they can be large."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: list[str] | None = None) -> QuerySet:
        return super().get_queryset(request, exclude_parameters).defer("data", "metadata")


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only: no add, change or delete, and no actions (so no `delete_selected`).

    Viewing follows Django's own rule (`has_view_permission`: the model's view
    permission, which superusers hold), so the detail page still renders, with
    every field read-only; a POST to it is refused with 403.
    """

    actions = None

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: models.Model | None = None) -> bool:
        return False


@admin.register(Stream)
class StreamAdmin(ReadOnlyAdmin):
    """Streams, most recently changed first, each linked to its events."""

    list_display = ["stream_id", "category", "version", "updated_at", "events_link"]
    list_filter = [CategoryFilter]
    # Prefix, case-sensitive: served by the primary key's index (on PostgreSQL its
    # `varchar_pattern_ops` twin), unlike `icontains`, which scans every row.
    search_fields = ["stream_id__startswith"]
    search_help_text = _("Stream id, or the start of one (e.g. “Order-”).")
    ordering = ["-updated_at"]
    sortable_by = ["stream_id", "category", "updated_at"]
    # One stream per aggregate: this table grows large too.
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fields = ["stream_id", "category", "version", "created_at", "updated_at", "events_link"]
    readonly_fields = fields

    @admin.display(description=_("events"))
    def events_link(self, obj: Stream) -> SafeString:
        label = ngettext("%(count)d event", "%(count)d events", obj.version) % {"count": obj.version}
        return format_html('<a href="{}">{} →</a>', _stream_events_url(obj.stream_id), label)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """The global log, newest first; the detail page shows data and metadata as indented JSON."""

    list_display = ["position", "event_type", "stream_link", "version", "category", "recorded_at"]
    list_filter = [EventTypeFilter, CategoryFilter, ("recorded_at", admin.DateFieldListFilter)]
    # Stream-id prefix on the foreign-key column (no join), plus exact event id; see get_search_results.
    search_fields = ["stream__stream_id__startswith"]
    search_help_text = _("Stream id or its start (e.g. “Order-”), or an exact event id.")
    ordering = ["-position"]
    sortable_by = ["position", "recorded_at"]
    paginator = EstimatedCountPaginator
    # The filtered list would otherwise run a second COUNT(*) over the whole table.
    show_full_result_count = False
    # Facet counts are one COUNT per filter choice over the log: too costly to offer.
    show_facets = admin.ShowFacets.NEVER
    fields = [
        "position",
        "event_id",
        "stream_link",
        "version",
        "event_type",
        "schema_version",
        "category",
        "recorded_at",
        "pretty_data",
        "pretty_metadata",
    ]
    readonly_fields = fields

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _EventChangeList

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """A term that is a UUID also matches `event_id` exactly, on its unique index.

        Listing `event_id` in `search_fields` would make Django cast the column to
        text for every row, so the UUID case is handled here instead.
        """
        term = search_term.strip()
        try:
            event_id = uuid.UUID(term)
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(Q(event_id=event_id) | Q(stream__stream_id__startswith=term)), False

    @admin.display(description=_("stream"))
    def stream_link(self, obj: Event) -> SafeString:
        return _stream_link(obj.stream_id)

    @admin.display(description=_("data"))
    def pretty_data(self, obj: Event) -> SafeString:
        return _pretty_json(obj.data)

    @admin.display(description=_("metadata"))
    def pretty_metadata(self, obj: Event) -> SafeString:
        return _pretty_json(obj.metadata)


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    """Snapshots are a cache of aggregate state: shown for diagnosis, rebuilt by the repository, never edited."""

    list_display = ["stream_link", "aggregate_type", "version", "created_at"]
    list_filter = ["aggregate_type"]
    search_fields = ["stream__stream_id__startswith"]
    search_help_text = _("Stream id, or the start of one.")
    fields = ["stream_link", "aggregate_type", "version", "created_at", "pretty_state"]
    readonly_fields = fields

    @admin.display(description=_("stream"), ordering="stream_id")
    def stream_link(self, obj: Snapshot) -> SafeString:
        return _stream_link(obj.stream_id)

    @admin.display(description=_("state"))
    def pretty_state(self, obj: Snapshot) -> SafeString:
        return _pretty_json(obj.state)
