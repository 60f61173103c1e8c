"""Admin for the outbox: messages on their way out (and the ids consumers have handled), changed only by actions.

An outbox row belongs to the processors: its status, attempts and lease decide
what is sent and in which order, so editing one by hand could send a message
twice or hold a stream back for good. The pages are read-only, and operators
act through the same services as scripts (`eventsourcing_app.outbox.operations`):

- "Retry now": pending messages in backoff become due at once.
- "Requeue dead letters": dead letters get a fresh set of attempts.
- "Discard": pending or dead messages are given up on, never sent.

Each reports how many of the selected rows it changed: rows in another state
are left alone (retrying a delivered message does nothing). The actions need
the outbox message's change permission, though the change form itself is refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from ..models import OutboxMessage, ProcessedMessage
from ..outbox.operations import discard, requeue_dead, retry_now
from .projections import ERROR_PREVIEW, _ActionsOnlyAdmin
from .store import ReadOnlyAdmin, _pretty_json, _stream_link


def _search_uuid(term: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(term.strip())
    except ValueError:
        return None


@admin.register(OutboxMessage)
class OutboxMessageAdmin(_ActionsOnlyAdmin):
    """Every message, newest first, with why it is waiting; retry, requeue or discard through actions."""

    list_display = [
        "created_at",
        "event_type",
        "stream_id",
        "destination",
        "status",
        "attempts",
        "available_at",
        "short_error",
    ]
    list_filter = ["status", "destination", "event_type"]
    # Stream id (exact or its start), or an exact message or event id: see get_search_results.
    search_fields = ["stream_id__startswith"]
    search_help_text = _("Stream id or its start (e.g. “Order-”), or an exact message id or event id.")
    ordering = ["-id"]
    sortable_by = ["created_at", "available_at", "attempts"]
    show_full_result_count = False
    fields = [
        "message_id",
        "destination",
        "status",
        "event_type",
        "stream_link",
        "event_link",
        "event_id",
        "tenant_id",
        "attempts",
        "available_at",
        "lease_owner",
        "lease_expires_at",
        "created_at",
        "delivered_at",
        "last_error",
        "pretty_payload",
    ]
    readonly_fields = fields
    actions = ["retry_now_selected", "requeue_dead_selected", "discard_selected"]

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """A UUID matches `message_id` or `event_id` exactly (each on its unique index), else the stream id."""
        found = _search_uuid(search_term)
        if found is None:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(Q(message_id=found) | Q(event_id=found)), False

    @admin.display(description=_("last error"))
    def short_error(self, obj: OutboxMessage) -> str:
        error = " ".join(obj.last_error.split())
        return error if len(error) <= ERROR_PREVIEW else error[: ERROR_PREVIEW - 1] + "…"

    @admin.display(description=_("stream"))
    def stream_link(self, obj: OutboxMessage) -> SafeString:
        return _stream_link(obj.stream_id)

    @admin.display(description=_("event"))
    def event_link(self, obj: OutboxMessage) -> SafeString:
        url = reverse("admin:eventsourcing_app_event_change", args=[obj.position])
        return format_html('<a href="{}">#{}</a>', url, obj.position)

    @admin.display(description=_("payload"))
    def pretty_payload(self, obj: OutboxMessage) -> SafeString:
        return _pretty_json(obj.payload)

    @admin.action(permissions=["operate"], description=_("Retry now (pending messages in backoff)"))
    def retry_now_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            retry_now,
            (
                "%(count)d of %(selected)d selected message made due now.",
                "%(count)d of %(selected)d selected messages made due now.",
            ),
        )

    @admin.action(permissions=["operate"], description=_("Requeue dead letters"))
    def requeue_dead_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            requeue_dead,
            (
                "%(count)d of %(selected)d selected message requeued.",
                "%(count)d of %(selected)d selected messages requeued.",
            ),
        )

    @admin.action(permissions=["operate"], description=_("Discard (never send)"))
    def discard_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._apply(
            request,
            queryset,
            discard,
            (
                "%(count)d of %(selected)d selected message discarded.",
                "%(count)d of %(selected)d selected messages discarded.",
            ),
        )

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet,
        operation: Callable[[QuerySet], int],
        done: tuple[str, str],
    ) -> None:
        """Run one operation over the selection and say how many rows it changed (the others were in another state)."""
        selected = queryset.count()
        count = operation(queryset)
        text = ngettext(done[0], done[1], selected) % {"count": count, "selected": selected}
        self.message_user(request, text, messages.SUCCESS if count else messages.WARNING)


@admin.register(ProcessedMessage)
class ProcessedMessageAdmin(ReadOnlyAdmin):
    """The message ids each consumer has handled (its de-duplication memory): shown for diagnosis only."""

    list_display = ["processed_at", "consumer", "message_id"]
    list_filter = ["consumer"]
    search_fields = ["=message_id"]
    search_help_text = _("An exact message id.")
    ordering = ["-id"]
    fields = ["consumer", "message_id", "processed_at"]
    readonly_fields = fields
